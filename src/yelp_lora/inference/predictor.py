"""Prediction: a loaded, merged adapter that turns review texts into star ratings."""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from pydantic import BaseModel, Field

from yelp_lora.artifacts import ADAPTER_DIRNAME, ADAPTER_META_FILE, ADAPTER_WEIGHTS, read_adapter_meta, resolve_adapter_dir
from yelp_lora.errors import ConfigError, RegistryError, SaveError
from yelp_lora.config import LABEL_NAMES, LONG_TEXT_MODES, MAX_WINDOWS_PER_TEXT, LongText
from yelp_lora.modeling.base import load_adapter
from yelp_lora.modeling.forward import predict_logits, predict_windows, softmax
from yelp_lora.modeling.hardware import bf16_supported, pick_device, predict_batch, prediction_backend
from yelp_lora.registry.manifest import Manifest
from yelp_lora.registry.store import Registry, local_base_dir
from yelp_lora.util.hashing import file_sha256

log = logging.getLogger("yelp_lora.inference")


@dataclass
class Prediction:
    label: str
    label_id: int
    stars: int
    confidence: float
    probabilities: dict[str, float]
    truncated: bool
    windows: int = 1  # forward passes the review was read in: more than 1 only when long_text="chunk" split it

    def as_dict(self) -> dict:
        return asdict(self)


class ModelInfo(BaseModel):
    """Which model answered, and how it turned texts into probabilities."""

    version: str | None = Field(description="Registry version, e.g. 'v2'; null for an unregistered adapter directory")
    base_model: str = Field(description="Base model the LoRA adapter was trained on")
    backend: str = Field(
        description="What computed the logits: torch, onnx (ONNX Runtime fp32), onnx-int8 or openvino; with 'auto' chosen per machine"
    )
    adapter_sha256: str | None = Field(description="sha256 of the adapter_model.safetensors bytes this service loaded")
    temperature: float = Field(
        description="Softmax temperature applied: probabilities = softmax(logits / temperature), fitted on the "
        "adapter's validation rows (yelp_lora.json); 1 = none. It never changes the predicted label"
    )
    long_text: LongText = Field(
        description="How a review longer than the model's token limit is read: 'truncate' (cut, as in training) or "
        "'chunk' (overlapping windows whose probabilities are averaged)"
    )


class ScoredTexts(NamedTuple):
    """What `Predictor.probabilities` gives for n texts, in their order."""

    probabilities: np.ndarray  # [n, 5], after the temperature
    truncated: np.ndarray  # [n] bool: part of the text was not read
    windows: np.ndarray  # [n] int: forward passes each text took (1 unless long_text="chunk" split it)


class Predictor:
    """An adapter merged into its base for inference; thread-safe for sequential calls."""

    def __init__(
        self, adapter: str | Path, *, bf16: bool = False, batch_size: int | None = None, backend: str = "auto",
        long_text: LongText = "truncate", manifest: Manifest | None = None,
    ):
        if long_text not in LONG_TEXT_MODES:
            raise ConfigError(f"long_text {long_text!r}: expected one of {', '.join(LONG_TEXT_MODES)}")
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"batch size {batch_size}: at least 1 text per forward pass")
        self.long_text = long_text
        self.max_windows = MAX_WINDOWS_PER_TEXT if long_text == "chunk" else 1
        self.adapter_dir = resolve_adapter_dir(adapter)
        self.meta = read_adapter_meta(self.adapter_dir)
        if not (self.adapter_dir / ADAPTER_META_FILE).is_file():  # a plain PEFT adapter: how it was trained is unknown
            log.warning("%s has no %s: reading reviews up to %d tokens cut at their head, temperature 1 (a plain "
                        "PEFT adapter's defaults)", self.adapter_dir, ADAPTER_META_FILE, self.meta.max_length)
        self.manifest = manifest  # set when loaded from the registry
        device = pick_device()
        # 'auto' resolves per machine (modeling.hardware); `backend_reason` says why, for logs and the bench.
        self.backend, self.backend_reason = prediction_backend(backend, device, bf16=bf16)[1:]
        # A registry version's base is read from the directory its hash was just checked on.
        base = str(local_base_dir(manifest.base_model.path)) if manifest and manifest.base_model.sha256 else None
        with tempfile.TemporaryDirectory(prefix="yelp-lora-adapter-") as private:
            # What is hashed is what is loaded: a private copy, which nothing can change between the two.
            staged = Path(private) / ADAPTER_DIRNAME
            shutil.copytree(self.adapter_dir, staged)
            weights = staged / ADAPTER_WEIGHTS
            sha256 = file_sha256(weights) if weights.is_file() else None
            if manifest and sha256 != manifest.adapter_sha256:
                raise RegistryError(
                    f"{self.adapter_dir}: the adapter weights changed after verification (sha256 {sha256}, "
                    f"manifest {manifest.adapter_sha256}); not loading them"
                )
            if self.backend == "openvino":
                from yelp_lora.inference.openvino_backend import load_openvino_classifier

                self.bf16 = bf16 and bf16_supported(torch.device("cpu"))  # OpenVINO runs on the CPU, whatever `device` is
                self.model, self.tokenizer = load_openvino_classifier(staged, bf16=self.bf16, base=base, origin=self.adapter_dir)
            elif self.backend != "torch":  # ONNX Runtime on CPU: 'onnx' (fp32) or 'onnx-int8'
                from yelp_lora.inference.onnx_backend import load_onnx_classifier

                try:
                    self.model, self.tokenizer = load_onnx_classifier(staged, self.backend, base=base, origin=self.adapter_dir)
                    self.bf16 = False
                except (OSError, SaveError) as err:  # e.g. a read-only cache: what auto chose is a speed-up, never a requirement
                    if backend != "auto":
                        raise
                    log.warning("prediction backend auto: ONNX Runtime could not be set up (%s); using torch", err)
                    self.backend, self.backend_reason = "torch", f"ONNX Runtime could not be set up: {err}"
            if self.backend == "torch":
                self.model, self.tokenizer = load_adapter(staged, merge=True, base=base, origin=self.adapter_dir)
                self.model.to(device)
                self.bf16 = bf16 and bf16_supported(device)
                if self.bf16:
                    # Weights cast once: measured faster than autocasting fp32 weights in every batch.
                    self.model.to(torch.bfloat16)
            # Which model answered: registry version (None for a bare adapter), base model, adapter hash.
            self.info = ModelInfo(
                version=manifest.version if manifest else None, base_model=self.meta.base_model, backend=self.backend,
                adapter_sha256=sha256, temperature=self.meta.temperature, long_text=long_text,
            )
        self.batch_size = batch_size or predict_batch(self.backend, device)
        self.max_length = self.meta.max_length

    @classmethod
    def from_registry(cls, ref: str, registry: str | Path | None = None, **options) -> "Predictor":
        """A verified registry version ('v2', 'latest') or alias ('production')."""
        adapter_dir, manifest = Registry(registry).open(ref)
        return cls(adapter_dir, manifest=manifest, **options)

    @property
    def concurrent_workers(self) -> int:
        """How many callers may run this predictor at once, each through its own `concurrent()` view."""
        return getattr(self.model, "concurrent_workers", 1)

    def concurrent(self) -> "Predictor":
        """This predictor for one of `concurrent_workers` callers running at once: its model on one
        thread (ONNX Runtime's one-thread session) instead of every core; itself where the model has
        no such form (torch, OpenVINO)."""
        if self.concurrent_workers == 1:
            return self
        view = copy.copy(self)
        view.model = self.model.concurrent()
        return view

    def probabilities(self, texts: list[str], *, progress: bool = False) -> ScoredTexts:
        """softmax(logits / the adapter's temperature) of each text, read as `long_text` says."""
        # bf16 weights carry their precision: no autocast needed.
        run = dict(batch_size=self.batch_size, bf16=False, progress=progress)
        temperature = self.meta.temperature
        if self.long_text == "chunk":
            return ScoredTexts(*predict_windows(
                self.model, self.tokenizer, texts, max_length=self.max_length, max_windows=self.max_windows,
                temperature=temperature, **run,
            ))
        logits, truncated = predict_logits(
            self.model, self.tokenizer, texts, max_length=self.max_length, head=self.meta.kept_head, **run
        )
        return ScoredTexts(softmax(logits, temperature), truncated, np.ones(len(texts), dtype=np.int64))

    def predict(self, texts: list[str], *, progress: bool = False) -> list[Prediction]:
        return to_predictions(self.probabilities(texts, progress=progress))


def to_predictions(scored: ScoredTexts) -> list[Prediction]:
    return [
        to_prediction(row, truncated=bool(cut), windows=int(windows))
        for row, cut, windows in zip(scored.probabilities, scored.truncated, scored.windows)
    ]


def to_prediction(probabilities: np.ndarray, *, truncated: bool = False, windows: int = 1) -> Prediction:
    label_id = int(np.argmax(probabilities))
    return Prediction(
        label=LABEL_NAMES[label_id],
        label_id=label_id,
        stars=label_id + 1,
        confidence=float(probabilities[label_id]),
        probabilities={name: float(p) for name, p in zip(LABEL_NAMES, probabilities)},
        truncated=truncated,
        windows=windows,
    )


def format_prediction(text: str, prediction: Prediction, width: int = 60) -> str:
    shown = text if len(text) <= width else text[: width - 1] + "…"
    bars = "  ".join(f"{name}={p:.3f}" for name, p in prediction.probabilities.items())
    read = [f"{prediction.windows} windows"] if prediction.windows > 1 else []
    read += ["truncated"] if prediction.truncated else []
    flag = f" ({', '.join(read)})" if read else ""
    return (
        f"{prediction.stars}★ {prediction.label:<15} confidence {prediction.confidence:.3f}{flag}  {shown!r}\n    {bars}"
    )

