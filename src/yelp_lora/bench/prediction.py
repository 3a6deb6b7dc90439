"""The prediction paths: `transformers.pipeline` on the unmerged PeftModel against our Predictor's backends."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from yelp_lora.bench.flops import forward_flops
from yelp_lora.bench.harness import PathProcess, path_processes, take_turns
from yelp_lora.bench.peaks import peak_memory
from yelp_lora.config import LABEL2ID, BenchSettings
from yelp_lora.artifacts import read_adapter_meta
from yelp_lora.metrics import headline
from yelp_lora.modeling.base import load_adapter, load_tokenizer, quiet_upstream_warnings, resolve_model_path
from yelp_lora.data.tokenize import encode
from yelp_lora.modeling.hardware import pick_device


PREDICT_PATHS = {
    "pipeline": "pipeline: unmerged PeftModel, defaults",
    "merged-fp32": "ours fp32: merged, length-sorted",
    "merged-bf16": "ours bf16 weights",
    "onnx-fp32": "ours onnx fp32 (ONNX Runtime, fused)",
    "onnx-int8": "ours onnx-int8 (ONNX Runtime, fused)",
    "openvino-fp32": "ours openvino fp32 (the same graph)",
    "openvino-bf16": "ours openvino bf16",
}
# How `predict` and `serve` are told to take each of our prediction paths.

PATH_OPTIONS = {
    "merged-fp32": dict(bf16=False, backend="torch"),
    "merged-bf16": dict(bf16=True, backend="torch"),
    "onnx-fp32": dict(bf16=False, backend="onnx"),
    "onnx-int8": dict(bf16=False, backend="onnx-int8"),
    "openvino-fp32": dict(bf16=False, backend="openvino"),
    "openvino-bf16": dict(bf16=True, backend="openvino"),
}


def _predict_worker(connection, *, path: str, adapter_dir: str, settings: BenchSettings) -> None:
    """One prediction path: load and tell the parent; then predict each chunk of texts it sends
    (timing only the prediction) until it sends None; then report peak memory."""
    from yelp_lora.inference.predictor import Predictor

    quiet_upstream_warnings()

    device = pick_device()
    started = time.perf_counter()
    if path == "pipeline":
        from transformers import pipeline

        model, tokenizer = load_adapter(adapter_dir, merge=False)
        classify = pipeline("text-classification", model=model, tokenizer=tokenizer, device=device)
        # Its only non-default: texts are cut at the adapter's max_length, as ours are (longer ones would
        # fail): the same number of tokens, though the pipeline can only keep a long text's head.
        max_length = read_adapter_meta(Path(adapter_dir)).max_length

        def run(batch):
            return np.array([LABEL2ID[out["label"]] for out in classify(batch, truncation=True, max_length=max_length)])
        precision, batch_size, first_token = "fp32", 1, False
    else:
        predictor = Predictor(adapter_dir, batch_size=settings.predict_batch_size, **PATH_OPTIONS[path])

        def run(batch):
            return predictor.probabilities(batch).probabilities.argmax(axis=1)
        precision = "int8" if predictor.backend == "onnx-int8" else ("bf16" if predictor.bf16 else "fp32")
        batch_size, first_token = predictor.batch_size, getattr(predictor.model, "first_token_last_layer", False)
    load_seconds = time.perf_counter() - started
    connection.send(dict(precision=precision, batch_size=batch_size, load_seconds=load_seconds, first_token_last_layer=first_token))
    warm_up = True  # the first chunk's first texts once more: lazy initialisation and first-call allocations
    while (texts := connection.recv()) is not None:
        if warm_up:
            run(texts[:8])
            warm_up = False
        started = time.perf_counter()
        labels = run(texts)
        if device.type == "cuda":
            torch.cuda.synchronize()
        connection.send((time.perf_counter() - started, labels.tolist()))
    connection.send(peak_memory())


def bench_prediction(
    paths: list[str], adapter_dir: Path, test_split, *, settings: BenchSettings, measure_round_peak, progress
) -> list[dict]:
    """Every prediction path on the same test rows, in rounds (one chunk each per round)."""
    from transformers import AutoConfig

    meta = read_adapter_meta(adapter_dir)
    tokenizer = load_tokenizer(str(adapter_dir))
    input_ids, _ = encode(tokenizer, test_split.texts, meta.max_length, meta.kept_head)  # what every path reads
    lengths = np.array([len(ids) for ids in input_ids])
    base_config = AutoConfig.from_pretrained(resolve_model_path(meta.base_model_path))
    rounds = [index for index in np.array_split(np.arange(len(test_split.texts)), settings.rounds) if len(index)]
    chunks = [[test_split.texts[i] for i in index] for index in rounds]
    prediction = []
    with path_processes() as processes:
        for path in paths:
            progress(f"prediction: loading {PREDICT_PATHS[path]} ...")
            processes.append(PathProcess(_predict_worker, path=path, adapter_dir=str(adapter_dir), settings=settings))

        def before_round(number: int) -> None:
            measure_round_peak()
            progress(f"prediction round {number + 1}/{len(chunks)}: {len(chunks[number])} texts on each path ...")

        labels = take_turns(processes, chunks, before_round)
        for path, handle, predicted in zip(paths, processes, labels):
            seconds = sum(handle.seconds)
            prediction.append({
                "path": path, "label": PREDICT_PATHS[path], **handle.info, "rows": len(test_split.texts),
                "seconds": seconds, "samples_per_s": len(test_split.texts) / seconds,
                "round_samples_per_s": [len(chunk) / spent for chunk, spent in zip(chunks, handle.seconds)],
                **headline(test_split.labels, np.concatenate(predicted)), **handle.close(),
            })
    for result in prediction:
        result["tokens_per_s"] = lengths.sum() / result["seconds"]
        flops = forward_flops(base_config, lengths, first_token_last_layer=result["first_token_last_layer"])
        result["flops_per_s"] = flops / result["seconds"]
        progress(f"  {result['label']}: {result['samples_per_s']:.1f} samples/s, macro-F1 {result['macro_f1']:.4f}")
    return prediction
