"""`yelp-lora bench`: our training and prediction paths against the usual way, side by side, in one run.

Every path runs on the same real rows, model and machine, each in its own process so its peak
memory is its own. The paths of each kind take turns in rounds (`PathProcess`, `take_turns`), so a
shared machine's slow spells fall on all of them alike:

- training: transformers' Trainer the way the tutorials run it (every text padded to 256 tokens,
  fp32, random order) against our `train` path (`training.recipe.training_arguments` and its Trainer: each
  random step sorted by length into dynamically padded micro-batches, dropout masks drawn 16 bits
  at a time on CPU, bf16 autocast where supported), plus our path in fp32 to show what bf16 adds.
  One pass over the same rows; validation macro-F1 after it, scored identically.
- prediction: `transformers.pipeline("text-classification")` on the unmerged PeftModel with its
  defaults (batch 1, fp32) against our `Predictor` (merged, length-sorted batches, inference
  mode) in fp32, bf16 and ONNX Runtime int8; macro-F1 of each on the same rows.
- the HTTP service  at 1, 8 and 32 concurrent clients.
- the machine's matmul peak (fp32, bf16) and each path's achieved model FLOP/s as a fraction of it.

Model FLOPs are counted per real (unpadded) token (`bench.flops`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from yelp_lora.artifacts import resolve_adapter_dir
from yelp_lora.bench.peaks import instruction_sets, measure_peak
from yelp_lora.bench.prediction import PATH_OPTIONS, PREDICT_PATHS, bench_prediction
from yelp_lora.bench.service import bench_service
from yelp_lora.bench.training import TRAIN_PATHS, bench_training, sweep_paths
from yelp_lora.config import BenchSettings
from yelp_lora.data.sampling import sample_split, train_val_split
from yelp_lora.data.sources import load_split, resolve_source
from yelp_lora.errors import ConfigError, ModelError
from yelp_lora.modeling.base import MINILM_ALIAS, load_tokenizer
from yelp_lora.modeling.hardware import auto_choices, bf16_supported, pick_device
from yelp_lora.util.provenance import environment

BERT_BASE = "bert-base"


# Named BERT shapes built with seeded random weights: bert-base's for its cost, a tiny one for
# fast tests and smoke runs of the real code paths.
RANDOM_SHAPES = {
    BERT_BASE: {},
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
}


def random_base(shape: str, target: Path, seed: int) -> Path:
    """A base model directory: a BERT of a named shape with seeded random weights (no head: the
    classifier's head is initialised from the run's seed, as on a real base) and MiniLM's tokenizer,
    which is bert-base-uncased's 30,522-token WordPiece vocabulary: identical token counts."""
    from transformers import BertConfig, BertModel

    if not (target / "config.json").is_file():
        torch.manual_seed(seed)
        BertModel(BertConfig(**RANDOM_SHAPES[shape])).save_pretrained(str(target))
        load_tokenizer(MINILM_ALIAS).save_pretrained(str(target))
    return target


def prepare_base(model: str, workdir: Path, seed: int) -> str:
    """'minilm', a directory or hub id as given; 'bert-base' = BertConfig() with seeded random weights."""
    return str(random_base(model, workdir / f"{model}-random", seed)) if model == BERT_BASE else model


def run_bench(settings: BenchSettings, progress=print) -> dict:
    unknown = sorted(set(settings.skip) - set(TRAIN_PATHS) - set(PREDICT_PATHS))
    if unknown:  # a misspelt path would quietly be measured
        raise ConfigError(f"--skip {', '.join(unknown)}: no such path (training: {', '.join(TRAIN_PATHS)}; "
                          f"prediction: {', '.join(PREDICT_PATHS)})")
    if settings.adapter:
        resolve_adapter_dir(settings.adapter)  # a wrong --adapter fails now, not after the training rounds
    workdir = Path(tempfile.mkdtemp(prefix="yelp-lora-bench-"))
    try:
        result = _measure(settings, workdir, progress)
    except BaseException:  # nothing to show for it: no work files left behind
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    if not settings.keep_work:  # a random bert-base alone is 419 MB
        shutil.rmtree(workdir, ignore_errors=True)
        result["workdir"] = None
    return result


def _measure(settings: BenchSettings, workdir: Path, progress) -> dict:
    load_at_start = os.getloadavg()
    device = pick_device()
    base = prepare_base(settings.model, workdir, settings.seed)
    settings = settings.model_copy(update={"data": resolve_source(settings.data)})
    train_split, val_split = train_val_split(
        load_split(settings.data, "train"), settings.val_samples, settings.samples, settings.seed
    )
    test_split = sample_split(load_split(settings.data, "test"), settings.predict_samples, settings.seed)
    bf16_ok = bf16_supported(device)
    # A backend runs where its runtime is installed (openvino reads the graph onnxruntime's tools export).
    onnx_ok = importlib.util.find_spec("onnxruntime") is not None
    installed = {"torch": True, "onnx": onnx_ok, "onnx-int8": onnx_ok,
                 "openvino": onnx_ok and importlib.util.find_spec("openvino") is not None}

    progress(f"matmul peak ({settings.matmul_size}^2) ...")
    peaks = [measure_peak(settings.matmul_size, device)]

    def measure_round_peak() -> None:
        peaks.append(measure_peak(settings.matmul_size, device))

    # Without bf16, "ours" is fp32: no separate fp32 path.
    train_paths = [path for path in TRAIN_PATHS if path not in settings.skip and not (path == "ours-fp32" and not bf16_ok)]
    train_paths += sweep_paths(settings)
    training = []
    if train_paths:
        training = bench_training(
            train_paths, base, train_split, val_split, settings=settings, workdir=str(workdir),
            measure_round_peak=measure_round_peak, progress=progress,
        )

    paths = [
        path for path in PREDICT_PATHS
        if path not in settings.skip and installed[PATH_OPTIONS.get(path, {}).get("backend", "torch")]
        and not (PATH_OPTIONS.get(path, {}).get("bf16") and not bf16_ok)
    ]
    adapter_dir, prediction = None, []
    if paths:
        adapter = settings.adapter or str(workdir / "adapter")
        if not Path(adapter).exists():
            raise ModelError("no adapter to predict with: pass --adapter or keep the 'ours' training path")
        adapter_dir = resolve_adapter_dir(adapter)
        prediction = bench_prediction(
            paths, adapter_dir, test_split, settings=settings, measure_round_peak=measure_round_peak, progress=progress
        )

    service = {"available": False, "reason": "--no-service"}
    ours = [r for r in prediction if r["path"] in PATH_OPTIONS]
    if settings.service and ours:  # ours is empty without prediction paths, so adapter_dir is set here
        fastest = max(ours, key=lambda r: r["samples_per_s"])["path"]  # served the way it runs fastest offline
        progress(f"service ({PREDICT_PATHS[fastest]}) ...")
        service = bench_service(
            str(adapter_dir), test_split.texts, settings=settings, log_file=workdir / "serve.log", path=fastest
        )

    # Measured at the start, before each round and at the end: on a shared machine the
    # best is the closest to what the hardware can do, and the fraction of it the most conservative.
    peaks.append(measure_peak(settings.matmul_size, device))
    peak = {name: max(measured[name] for measured in peaks) for name in peaks[0]}
    for result in training + prediction:
        result["of_peak"] = result["flops_per_s"] / peak[_peak_of(result["precision"], peak)]
    by_path = lambda rows, name: next((r for r in rows if r["path"] == name), None)  # noqa: E731
    fp32 = by_path(prediction, "merged-fp32")
    return {
        "settings": settings.model_dump(mode="json"),
        "machine": {**environment()["hardware"], "load_average_start": load_at_start, "load_average_end": os.getloadavg()},
        "libraries": environment()["libraries"],
        "base_model": base if settings.model != BERT_BASE else "bert-base shape (BertConfig(), random weights)",
        "adapter": str(adapter_dir) if adapter_dir else None,
        "peak_flops": peak,
        "instruction_sets": instruction_sets() if device.type == "cpu" else None,
        "auto": [choice._asdict() for choice in auto_choices(device)],
        "peak_flops_measured": peaks,
        "training": training,
        "prediction": prediction,
        "service": service,
        "speedup": {
            "training": _ratio(by_path(training, "ours"), by_path(training, "usual")),
            "prediction": _ratio(max(prediction, key=lambda r: r["samples_per_s"], default=None), by_path(prediction, "pipeline")),
        },
        "macro_f1_vs_fp32": {r["path"]: r["macro_f1"] - fp32["macro_f1"] for r in prediction} if fp32 else {},
        "workdir": str(workdir),
    }


def _peak_of(precision: str, peak: dict[str, float]) -> str:
    """Which peak a path is measured against: its own precision's (int8 against bf16 where no int8 peak was measured)."""
    return precision if precision in peak else "bf16"


def _ratio(ours: dict | None, usual: dict | None) -> float | None:
    return ours["samples_per_s"] / usual["samples_per_s"] if ours and usual else None
