"""The FLOP model: model FLOPs per real (unpadded) token, so work spent on padding earns nothing.

    forward, per layer and token: 2*(4h^2 + 2hi) for the Q/K/V/output and FFN matmuls, plus 4nh
    for the attention scores and the weighted sum over a text of n tokens, plus 4rh per LoRA
    projection (training only; merged away at inference); per text, 2h^2 + 10h for the pooler
    and the 5-way head.
    training: the frozen matmuls run forward and once more for the input gradient (2x); the
    attention products need gradients for both operands (3x); LoRA and the head also need
    weight gradients (3x). Layer 0 needs no gradient into its frozen inputs, so this overcounts
    by at most 1/layers of the frozen backward.

It needs only numpy and the model's config, so `benchmarks/gpu_bench.py` imports it too.
"""

from __future__ import annotations

import numpy as np

NUM_LABELS = 5  # the head's outputs; kept here so this module imports nothing of the package


def _dims(model_config) -> tuple[int, int, int]:
    return model_config.hidden_size, model_config.intermediate_size, model_config.num_hidden_layers


def forward_flops(model_config, lengths: np.ndarray, first_token_last_layer: bool = False) -> float:
    """Model FLOPs of one inference pass over texts of these real lengths (see the module notes).

    `first_token_last_layer`: the last layer computes keys and values for every token but its
    query, attention, output projection and FFN for the first token only (our ONNX graphs); the
    FLOPs they skip are not counted.
    """
    h, i, layers = _dims(model_config)
    n = np.asarray(lengths, dtype=np.float64)
    per_layer = n * 2 * (4 * h * h + 2 * h * i) + 4 * n * n * h
    first_token_only = n * 2 * 2 * h * h + 2 * (2 * h * h + 2 * h * i) + 4 * n * h
    last_layer = first_token_only if first_token_last_layer else per_layer
    per_text = (layers - 1) * per_layer + last_layer + 2 * h * h + 2 * h * NUM_LABELS
    return float(per_text.sum())


def training_flops(model_config, lengths: np.ndarray, lora) -> float:
    """Model FLOPs of one training step over texts of these real lengths (forward and backward)."""
    h, i, layers = _dims(model_config)
    n = np.asarray(lengths, dtype=np.float64)
    frozen = 2 * (4 * h * h + 2 * h * i)
    attention = 4 * n * h
    adapters = 4 * lora.r * h * len(lora.target_modules)
    per_text = layers * n * (2 * frozen + 3 * attention + 3 * adapters) + 2 * 2 * h * h + 3 * 2 * h * NUM_LABELS
    return float(per_text.sum())
