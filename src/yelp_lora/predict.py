"""Serving-side prediction: a loaded, merged adapter that turns review texts into star ratings."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from yelp_lora import model as model_stage
from yelp_lora.config import LABEL_NAMES
from yelp_lora.evaluate import read_adapter_meta, resolve_adapter_dir


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


class Predictor:
    """An adapter merged into its base for inference; thread-safe for sequential calls."""

    def __init__(self, adapter: str | Path, *, bf16: bool = False, batch_size: int = 64, backend: str = "torch"):
        self.adapter_dir = resolve_adapter_dir(adapter)
        self.meta = read_adapter_meta(self.adapter_dir)
        self.backend = backend
        if backend == "torch":
            self.model, self.tokenizer = model_stage.load_adapter(self.adapter_dir, merge=True)
            device = model_stage.pick_device()
            self.model.to(device)
            self.bf16 = bf16 and model_stage.bf16_supported(device)
            if self.bf16:
                # Weights cast once: measured faster than autocasting fp32 weights in every batch.
                self.model.to(torch.bfloat16)
        else:  # ONNX Runtime on CPU: 'onnx' (fp32) or 'onnx-int8'
            from yelp_lora.onnx_backend import load_onnx_classifier

            self.model, self.tokenizer = load_onnx_classifier(self.adapter_dir, backend)
            self.bf16 = False
        self.batch_size = batch_size
        self.max_length = int(self.meta["max_length"])

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

