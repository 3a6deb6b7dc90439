"""Prediction: a loaded, merged adapter that turns review texts into star ratings."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, Field

from yelp_lora.artifacts import ADAPTER_DIRNAME, ADAPTER_WEIGHTS, read_adapter_meta, resolve_adapter_dir
from yelp_lora.errors import RegistryError
from yelp_lora.config import LABEL_NAMES
from yelp_lora.modeling.base import load_adapter
from yelp_lora.modeling.forward import predict_logits, softmax
from yelp_lora.modeling.hardware import bf16_supported, pick_device
from yelp_lora.registry.manifest import Manifest
from yelp_lora.registry.store import Registry, local_base_dir
from yelp_lora.util.hashing import file_sha256


@dataclass
class Prediction:
    label: str
    label_id: int
    stars: int
    confidence: float
    probabilities: dict[str, float]
    truncated: bool

    def as_dict(self) -> dict:
        return asdict(self)


# Texts per forward pass when none is given, measured on 500 length-sorted train.csv reviews
# (docs/performance.md): on CPUs small batches keep activations in cache and padding near zero.
# ONNX runs one text at a time: int8's dynamic quantization scales activations per batch, so in
# a larger batch a review's prediction would depend on the reviews sent with it.
AUTO_PREDICT_BATCH = {"cuda": 128, "cpu": 16, "onnx": 1}


class ModelInfo(BaseModel):
    """Which model answered."""

    version: str | None = Field(description="Registry version, e.g. 'v2'; null for an unregistered adapter directory")
    base_model: str = Field(description="Base model the LoRA adapter was trained on")
    adapter_sha256: str | None = Field(description="sha256 of the adapter_model.safetensors bytes this service loaded")


class Predictor:
    """An adapter merged into its base for inference; thread-safe for sequential calls."""

    def __init__(
        self, adapter: str | Path, *, bf16: bool = False, batch_size: int | None = None, backend: str = "torch",
        manifest: Manifest | None = None,
    ):
        self.adapter_dir = resolve_adapter_dir(adapter)
        self.meta = read_adapter_meta(self.adapter_dir)
        self.manifest = manifest  # set when loaded from the registry
        self.backend = backend
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
            # Which model answers: registry version (None for a bare adapter), base model, adapter hash.
            self.info = ModelInfo(
                version=manifest.version if manifest else None, base_model=self.meta.base_model, adapter_sha256=sha256
            )
            if backend == "torch":
                self.model, self.tokenizer = load_adapter(staged, merge=True, base=base, origin=self.adapter_dir)
                device = pick_device()
                auto_batch = AUTO_PREDICT_BATCH[device.type]
                self.model.to(device)
                self.bf16 = bf16 and bf16_supported(device)
                if self.bf16:
                    # Weights cast once: measured faster than autocasting fp32 weights in every batch.
                    self.model.to(torch.bfloat16)
            else:  # ONNX Runtime on CPU: 'onnx' (fp32) or 'onnx-int8'
                from yelp_lora.inference.onnx_backend import load_onnx_classifier

                self.model, self.tokenizer = load_onnx_classifier(staged, backend, base=base, origin=self.adapter_dir)
                self.bf16 = False
                auto_batch = AUTO_PREDICT_BATCH["onnx"]
        self.batch_size = batch_size or auto_batch
        self.max_length = self.meta.max_length

    @classmethod
    def from_registry(cls, ref: str, registry: str | Path | None = None, **options) -> "Predictor":
        """A verified registry version ('v2', 'latest') or alias ('production')."""
        adapter_dir, manifest = Registry(registry).open(ref)
        return cls(adapter_dir, manifest=manifest, **options)

    def probabilities(self, texts: list[str], *, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities [n, 5], truncated [n])."""
        logits, truncated = predict_logits(
            self.model, self.tokenizer, texts, max_length=self.max_length, head=self.meta.kept_head, batch_size=self.batch_size,
            bf16=False, progress=progress,  # bf16 weights carry their precision: no autocast needed
        )
        return softmax(logits), truncated

    def predict(self, texts: list[str], *, progress: bool = False) -> list[Prediction]:
        probabilities, truncated = self.probabilities(texts, progress=progress)
        return [to_prediction(row, bool(cut)) for row, cut in zip(probabilities, truncated)]


def to_prediction(probabilities: np.ndarray, truncated: bool = False) -> Prediction:
    label_id = int(np.argmax(probabilities))
    return Prediction(
        label=LABEL_NAMES[label_id],
        label_id=label_id,
        stars=label_id + 1,
        confidence=float(probabilities[label_id]),
        probabilities={name: float(p) for name, p in zip(LABEL_NAMES, probabilities)},
        truncated=truncated,
    )


def format_prediction(text: str, prediction: Prediction, width: int = 60) -> str:
    shown = text if len(text) <= width else text[: width - 1] + "…"
    bars = "  ".join(f"{name}={p:.3f}" for name, p in prediction.probabilities.items())
    flag = " (truncated)" if prediction.truncated else ""
    return (
        f"{prediction.stars}★ {prediction.label:<15} confidence {prediction.confidence:.3f}{flag}  {shown!r}\n    {bars}"
    )

