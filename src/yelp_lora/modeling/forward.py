"""Batched inference: tokenise once, run length-sorted batches, return logits in input order."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from yelp_lora.config import NUM_LABELS
from yelp_lora.data.tokenize import encode
from yelp_lora.util.progress import progress as progress_bar


def predict_logits(
    model,
    tokenizer,
    texts: list[str],
    *,
    max_length: int = 256,
    head: int | None = None,
    batch_size: int = 64,
    bf16: bool = False,
    progress: bool = False,
    desc: str = "Predicting",
) -> tuple[np.ndarray, np.ndarray]:
    """(logits [n, 5] float32, truncated [n] bool), in the order of `texts`.

    Texts are tokenised once (a long one cut as `data.tokenize.encode` cuts it, keeping `head`
    ids from its start) and run in length-sorted batches, so each batch pads only to its own
    longest text.
    """
    device = model.device  # a transformers model, or an onnx_backend.OnnxClassifier
    input_ids, truncated = encode(tokenizer, texts, max_length, head)
    lengths = np.array([len(ids) for ids in input_ids])
    order = np.argsort(-lengths, kind="stable")
    logits = np.zeros((len(texts), NUM_LABELS), dtype=np.float32)
    batches = [order[start : start + batch_size] for start in range(0, len(texts), batch_size)]
    # A model with `concurrent_workers` (ONNX Runtime) runs several batches at once, one thread each.
    workers = min(getattr(model, "concurrent_workers", 1), len(batches))
    forward = model.concurrent() if workers > 1 else model

    def run(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = tokenizer.pad({"input_ids": [input_ids[i] for i in index]}, return_tensors="pt")
        # Both modes are thread-local, so they are entered in the thread that runs the batch.
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            output = forward(**{key: value.to(device) for key, value in batch.items()})
        return index, output.logits.float().cpu().numpy()

    with ThreadPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        results = pool.map(run, batches) if pool else map(run, batches)
        for index, rows in progress_bar(results, desc=desc, enabled=progress, unit="batch", total=len(batches)):
            logits[index] = rows
    return logits, truncated


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
