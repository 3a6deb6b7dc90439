"""Batched inference: tokenise once, run length-sorted batches, return logits in input order (or, for
texts read as overlapping windows, each text's mean window probabilities)."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from yelp_lora.config import NUM_LABELS
from yelp_lora.data.tokenize import encode, encode_windows, pad
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
    ids from its start) and run in length-sorted batches (`batched_logits`).
    """
    input_ids, truncated = encode(tokenizer, texts, max_length, head)
    return batched_logits(model, tokenizer, input_ids, batch_size=batch_size, bf16=bf16, progress=progress, desc=desc), truncated


def predict_windows(
    model,
    tokenizer,
    texts: list[str],
    *,
    max_length: int,
    max_windows: int,
    temperature: float = 1.0,
    batch_size: int = 64,
    bf16: bool = False,
    progress: bool = False,
    desc: str = "Predicting",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities [n, 5], partly read [n] bool, windows [n] int), in the order of `texts`.

    A text longer than max_length is read as up to `max_windows` overlapping windows
    (`data.tokenize.encode_windows`) and its probabilities are the mean of its windows'
    softmax(logits / temperature); a text that fits is one window, as `predict_logits` reads it.
    """
    window_ids, owners, partly_read = encode_windows(tokenizer, texts, max_length, max_windows)
    logits = batched_logits(model, tokenizer, window_ids, batch_size=batch_size, bf16=bf16, progress=progress, desc=desc)
    windows = np.bincount(owners, minlength=len(texts))
    summed = np.zeros((len(texts), NUM_LABELS), dtype=np.float64)
    np.add.at(summed, owners, softmax(logits, temperature))
    return (summed / np.maximum(windows, 1)[:, None]).astype(np.float32), partly_read, windows


def batched_logits(
    model, tokenizer, input_ids: list[list[int]], *, batch_size: int = 64, bf16: bool = False, progress: bool = False,
    desc: str = "Predicting",
) -> np.ndarray:
    """Logits [n, 5] float32 of token id sequences, in their order, run in length-sorted batches so
    each batch pads only to its own longest sequence."""
    device = model.device  # a transformers model, or an onnx_backend.OnnxClassifier
    lengths = np.array([len(ids) for ids in input_ids])
    order = np.argsort(-lengths, kind="stable")
    logits = np.zeros((len(input_ids), NUM_LABELS), dtype=np.float32)
    batches = [order[start : start + batch_size] for start in range(0, len(input_ids), batch_size)]
    # A model with `concurrent_workers` (ONNX Runtime) runs several batches at once, one thread each.
    workers = min(getattr(model, "concurrent_workers", 1), len(batches))
    forward = model.concurrent() if workers > 1 else model

    def run(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = pad([input_ids[i] for i in index], tokenizer.pad_token_id, tokenizer.padding_side)
        # Both modes are thread-local, so they are entered in the thread that runs the batch.
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            output = forward(**{key: torch.from_numpy(value).to(device) for key, value in batch.items()})
        return index, output.logits.float().cpu().numpy()

    with ThreadPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        results = pool.map(run, batches) if pool else map(run, batches)
        for index, rows in progress_bar(results, desc=desc, enabled=progress, unit="batch", total=len(batches)):
            logits[index] = rows
    return logits


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature): the temperature (the adapter's, fitted on validation) changes
    how sure the probabilities are, never which label is the most probable."""
    scaled = np.asarray(logits) / temperature
    shifted = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
