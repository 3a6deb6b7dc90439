"""Serving-side prediction: a loaded, merged adapter that turns review texts into star ratings."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field
import torch

from yelp_lora import model as model_stage
from yelp_lora.config import LABEL_NAMES
from yelp_lora.data import DataError, check_input_text
from yelp_lora.evaluate import read_adapter_meta, resolve_adapter_dir
from yelp_lora.registry import ADAPTER_WEIGHTS, Registry, file_sha256


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
AUTO_BATCH = {"cuda": 128, "cpu": 16, "onnx": 1}


class Predictor:
    """An adapter merged into its base for inference; thread-safe for sequential calls."""

    def __init__(
        self, adapter: str | Path, *, bf16: bool = False, batch_size: int | None = None, backend: str = "torch",
        manifest: dict | None = None,
    ):
        self.adapter_dir = resolve_adapter_dir(adapter)
        self.meta = read_adapter_meta(self.adapter_dir)
        self.manifest = manifest  # set when loaded from the registry
        weights = self.adapter_dir / ADAPTER_WEIGHTS
        # Which model answers: registry version (None for a bare adapter), base model, adapter hash.
        self.info = {
            "version": manifest["version"] if manifest else None,
            "base_model": self.meta["base_model"],
            "adapter_sha256": manifest["adapter_sha256"] if manifest else file_sha256(weights) if weights.is_file() else None,
        }
        self.backend = backend
        if backend == "torch":
            self.model, self.tokenizer = model_stage.load_adapter(self.adapter_dir, merge=True)
            device = model_stage.pick_device()
            auto_batch = AUTO_BATCH[device.type]
            self.model.to(device)
            self.bf16 = bf16 and model_stage.bf16_supported(device)
            if self.bf16:
                # Weights cast once: measured faster than autocasting fp32 weights in every batch.
                self.model.to(torch.bfloat16)
        else:  # ONNX Runtime on CPU: 'onnx' (fp32) or 'onnx-int8'
            from yelp_lora.onnx_backend import load_onnx_classifier

            self.model, self.tokenizer = load_onnx_classifier(self.adapter_dir, backend)
            self.bf16 = False
            auto_batch = AUTO_BATCH["onnx"]
        self.batch_size = batch_size or auto_batch
        self.max_length = int(self.meta["max_length"])

    @classmethod
    def from_registry(cls, ref: str, registry: str | Path | None = None, **options) -> "Predictor":
        """A verified registry version ('v2', 'latest') or alias ('production')."""
        adapter_dir, manifest = Registry(registry).open(ref)
        return cls(adapter_dir, manifest=manifest, **options)

    def probabilities(self, texts: list[str], *, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities [n, 5], truncated [n])."""
        logits, truncated = model_stage.predict_logits(
            self.model, self.tokenizer, texts, max_length=self.max_length, batch_size=self.batch_size,
            bf16=False, progress=progress,  # bf16 weights carry their precision: no autocast needed
        )
        return model_stage.softmax(logits), truncated

    def predict(self, texts: list[str], *, progress: bool = False) -> list[Prediction]:
        probabilities, truncated = self.probabilities(texts, progress=progress)
        return [to_prediction(row, bool(cut)) for row, cut in zip(probabilities, truncated)]


class ModelInfo(BaseModel):
    """Which model answered."""

    version: str | None = Field(description="Registry version, e.g. 'v2'; null for an unregistered adapter directory")
    base_model: str = Field(description="Base model the LoRA adapter was trained on")
    adapter_sha256: str | None = Field(description="sha256 of adapter_model.safetensors")


class SentimentResult(BaseModel):
    """One review's predicted sentiment."""

    label: str = Field(description="One of " + ", ".join(LABEL_NAMES))
    label_id: int = Field(ge=0, le=len(LABEL_NAMES) - 1, description="0-4, the index of label")
    stars: int = Field(ge=1, le=len(LABEL_NAMES), description="Predicted star rating, 1-5 (= label_id + 1)")
    confidence: float = Field(description="Probability of the predicted label")
    probabilities: dict[str, float] = Field(description="Probability of each of the five labels (sums to 1)")
    truncated: bool = Field(description="True when the review was longer than the model's token limit and its end was not read")


class Classification(BaseModel):
    model: ModelInfo
    results: list[SentimentResult] = Field(description="One result per input text, in input order")


def classification(info: dict, predictions: list[Prediction]) -> Classification:
    return Classification(model=ModelInfo(**info), results=[SentimentResult(**p.as_dict()) for p in predictions])


# Limits of one request to a service (HTTP or agent tool): bounded work per call.
MAX_TEXTS_PER_REQUEST = 64
MAX_REQUEST_TEXT_CHARS = 20_000


class InputError(ValueError):
    """Texts a service cannot classify; `code` names the problem for API clients."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def check_texts(texts: list, *, max_texts: int = MAX_TEXTS_PER_REQUEST, max_chars: int = MAX_REQUEST_TEXT_CHARS) -> list[str]:
    """The texts of one service request, or an InputError naming the first problem (index and why)."""
    if not texts:
        raise InputError("no_texts", "no texts given: send at least one review text")
    if len(texts) > max_texts:
        raise InputError("too_many_texts", f"{len(texts)} texts in one request, over the limit of {max_texts}")
    for index, text in enumerate(texts):
        try:
            check_input_text(f"texts[{index}]", text)
        except DataError as err:
            raise InputError("invalid_text", str(err)) from None
        if len(text) > max_chars:
            raise InputError(
                "text_too_long", f"texts[{index}] is {len(text):,} characters long, over the limit of {max_chars:,}"
            )
    return texts


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

