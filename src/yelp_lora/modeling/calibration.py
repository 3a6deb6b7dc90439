"""Activation ranges for int8: each quantized matmul's largest input per channel, on training rows.

ONNX Runtime's dynamic int8 gives each matmul input one scale for all its values, so a few
channels of large values (BERT's LayerNorm outputs and FFN activations have them) leave few
levels for the rest. SmoothQuant moves part of each channel's range into the weights instead
(`inference.onnx_backend.smooth_activations`); it needs these ranges, observed once after
training on the run's own training rows and saved beside the adapter, so that the int8 export
on a deployment machine needs no data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from yelp_lora.artifacts import ADAPTER_WEIGHTS, INT8_CALIBRATION_FILE
from yelp_lora.errors import ModelError
from yelp_lora.modeling.forward import predict_logits
from yelp_lora.util.atomic import atomic_write_bytes
from yelp_lora.util.hashing import file_sha256

CALIBRATION_ROWS = 128
# The inputs of these linear layers (query, key and value read the same one), per encoder layer.
OBSERVED = ("attention.self.query", "attention.output.dense", "intermediate.dense", "output.dense")


def observed_key(layer: int, linear: str) -> str:
    """The name a matmul input's ranges are saved under: its linear layer's path in the encoder."""
    return f"encoder.layer.{layer}.{linear}"


def activation_ranges(model, tokenizer, texts: list[str], *, max_length: int, head: int | None) -> dict[str, np.ndarray]:
    """{observed_key: max |input| per channel} over every token of `texts`, one text per pass (no padding)."""
    ranges: dict[str, torch.Tensor] = {}
    hooks = []

    def observe(key: str):
        def hook(_module, inputs):
            largest = inputs[0].detach().abs().flatten(0, -2).amax(0)
            ranges[key] = torch.maximum(ranges[key], largest) if key in ranges else largest
        return hook

    for index, layer in enumerate(model.base_model.encoder.layer):
        for linear in OBSERVED:
            hooks.append(layer.get_submodule(linear).register_forward_pre_hook(observe(observed_key(index, linear))))
    try:
        predict_logits(model, tokenizer, texts, max_length=max_length, head=head, batch_size=1)
    finally:
        for hook in hooks:
            hook.remove()
    return {key: value.float().numpy() for key, value in ranges.items()}


def save_activation_ranges(adapter_dir: Path, ranges: dict[str, np.ndarray]) -> None:
    """Save `ranges` beside the adapter, with the hash of the weights they were observed on."""
    from safetensors.numpy import save

    tensors = {key: np.ascontiguousarray(value, dtype=np.float32) for key, value in sorted(ranges.items())}
    metadata = {"adapter_sha256": file_sha256(adapter_dir / ADAPTER_WEIGHTS)}
    atomic_write_bytes(adapter_dir / INT8_CALIBRATION_FILE, save(tensors, metadata=metadata))


def load_activation_ranges(adapter_dir: Path, origin: Path | None = None) -> dict[str, np.ndarray] | None:
    """The adapter's saved ranges, or None for an adapter trained before they were saved (`origin`:
    where the adapter really is, named in errors when `adapter_dir` is a private copy of it)."""
    from safetensors import SafetensorError, safe_open

    path = adapter_dir / INT8_CALIBRATION_FILE
    if not path.is_file():
        return None
    shown = (origin or adapter_dir) / INT8_CALIBRATION_FILE
    try:
        with safe_open(str(path), framework="np") as file:
            observed_on = (file.metadata() or {}).get("adapter_sha256")
            ranges = {key: file.get_tensor(key) for key in file.keys()}
    except (OSError, SafetensorError) as err:
        raise ModelError(f"{shown} is not a readable safetensors file ({err}); delete it to export int8 without it") from None
    # Files written before 2026-12-08 carry no hash; ranges observed on other weights would smooth int8 wrongly.
    weights = adapter_dir / ADAPTER_WEIGHTS
    if observed_on and weights.is_file() and observed_on != (actual := file_sha256(weights)):
        raise ModelError(
            f"{shown} was observed on other adapter weights ({ADAPTER_WEIGHTS} sha256 {observed_on[:12]}…, "
            f"this adapter's {actual[:12]}…); `yelp-lora calibrate RUN_DIR` on this adapter's run writes its own, "
            "or delete the file to export int8 without it"
        )
    return ranges
