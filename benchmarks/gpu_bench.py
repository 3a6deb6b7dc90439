"""Training and prediction throughput of LoRA on bert-base's shape, with MFU, in one time-boxed run.

Needs only torch, transformers, peft and numpy (random weights, nothing is downloaded), so a
GPU machine without the package installed runs it from the checkout as it is: the FLOP model is
the package's own `yelp_lora.bench.flops`, imported when the package is installed and otherwise
read from src/yelp_lora/bench/flops.py beside this folder (that file imports nothing else of it).

    python benchmarks/gpu_bench.py                 # CUDA: bert-base shape, ~8 minutes at most
    python benchmarks/gpu_bench.py --tiny          # CPU smoke test: a 2-layer model, seconds

Every figure is printed the moment it is measured, so a run cut short still reports. MFU is model
FLOPs per second over the measured dense matmul peak of the same precision.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

try:
    from yelp_lora.bench import flops as flops_model
except ImportError:  # not installed: the same module, from this checkout
    _FLOPS_FILE = Path(__file__).resolve().parents[1] / "src" / "yelp_lora" / "bench" / "flops.py"
    _spec = importlib.util.spec_from_file_location("yelp_lora_flops", _FLOPS_FILE)
    flops_model = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(flops_model)

NUM_LABELS = flops_model.NUM_LABELS
LORA = SimpleNamespace(r=8, target_modules=["query", "value"])
STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype: torch.dtype, size: int, device: torch.device, repeats: int = 10) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.matmul(a, b)
    sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b)
    sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def texts_of(tokens: int, seq: int) -> np.ndarray:
    """The real lengths of tokens // seq texts of seq tokens each (no padding)."""
    return np.full(tokens // seq, seq)


def build(config, device: torch.device, lora: bool = True):
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(config)  # config carries attn_implementation="sdpa"
    if lora:
        model = get_peft_model(
            model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"])
        )
    return model.to(device)


def timed_steps(step, device: torch.device, seconds: float, warmup: int = 3, min_steps: int = 3) -> tuple[int, float]:
    """(steps, wall seconds) of `step` run for about `seconds` after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    sync(device)
    started, steps = time.perf_counter(), 0
    while steps < min_steps or time.perf_counter() - started < seconds:
        step()
        steps += 1
        if steps % 5 == 0:
            sync(device)
    sync(device)
    return steps, time.perf_counter() - started


def bench_training(config, device, batch: int, seq: int, bf16: bool, seconds: float, peak: float) -> None:
    model = build(config, device)
    model.train()
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, fused=fused)
    ids = torch.randint(1000, config.vocab_size, (batch, seq), device=device)
    mask = torch.ones_like(ids)
    labels = torch.randint(0, NUM_LABELS, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    steps, wall = timed_steps(step, device, seconds)
    flops = flops_model.training_flops(config, texts_of(steps * batch * seq, seq), LORA) / wall
    name = "bf16 autocast" if bf16 else ("fp32+TF32" if torch.backends.cuda.matmul.allow_tf32 else "fp32")
    say(
        f"train  {name:<13} batch {batch:>4} x {seq}: {steps * batch / wall:9.1f} samples/s "
        f"{steps * batch * seq / wall:10.0f} tokens/s  {_rate(flops)}  MFU {100 * flops / peak:5.1f}%  "
        f"({steps} steps, peak mem {_memory(device)})"
    )


def bench_prediction(config, device, batch: int, seq: int, seconds: float, peak: float) -> None:
    model = build(config, device).merge_and_unload().eval()
    model.to(torch.bfloat16)  # inference needs no fp32 master weights
    ids = torch.randint(1000, config.vocab_size, (batch, seq), device=device)
    mask = torch.ones_like(ids)

    @torch.inference_mode()
    def step():
        model(input_ids=ids, attention_mask=mask)

    steps, wall = timed_steps(step, device, seconds)
    flops = flops_model.forward_flops(config, texts_of(steps * batch * seq, seq)) / wall
    say(
        f"predict bf16 weights  batch {batch:>4} x {seq}: {steps * batch / wall:9.1f} samples/s "
        f"{steps * batch * seq / wall:10.0f} tokens/s  {_rate(flops)}  MFU {100 * flops / peak:5.1f}%  "
        f"({steps} steps, peak mem {_memory(device)})"
    )


def _rate(flops: float) -> str:
    return f"{flops / 1e12:7.2f} TFLOP/s" if flops >= 1e12 else f"{flops / 1e9:7.1f} GFLOP/s"


def _memory(device: torch.device) -> str:
    if device.type != "cuda":
        return "n/a on CPU"
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return f"{peak:.1f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="2-layer, hidden-128 model and small batches (CPU smoke test)")
    parser.add_argument("--budget", type=float, default=480, help="seconds for the whole run (default 480)")
    parser.add_argument("--seq", type=int, default=256, help="tokens per text (all real: no padding)")
    args = parser.parse_args()
    from transformers import BertConfig

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.tiny or device.type != "cuda"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        say(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    else:
        say(f"device: CPU ({torch.get_num_threads()} threads), torch {torch.__version__}; tiny settings")
    shape = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512) if tiny else {}
    config = BertConfig(num_labels=NUM_LABELS, attn_implementation="sdpa", **shape)
    seq = min(args.seq, 64) if tiny else args.seq
    size = 512 if tiny else 8192
    peak_bf16 = matmul_peak(torch.bfloat16, size, device)
    peak_fp32 = matmul_peak(torch.float32, size, device)  # TF32 tensor cores on Ampere+ when allowed
    say(f"matmul peak {size}^2: bf16 {_rate(peak_bf16)}, fp32/TF32 {_rate(peak_fp32)}")
    say(f"model: {'tiny BERT' if tiny else 'bert-base shape'}, {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        "attention sdpa, LoRA r=8 on query/value")

    # (what, batch, seconds each); the reference batch of 16 first, to show it is launch-bound on a large GPU.
    batches = (4, 16) if tiny else (16, 64, 256)
    phase = 5 if tiny else 25
    plan = [("train", b, True) for b in batches] + [("train-fp32", batches[1], False)]
    plan += [("predict", b, None) for b in ((16, 64) if tiny else (64, 256, 1024))]
    for what, batch, bf16 in plan:
        if time.monotonic() - STARTED > args.budget - 2 * phase:
            say(f"time box reached: skipping {what} batch {batch} and the rest")
            break
        try:
            if what.startswith("train"):
                peak = peak_bf16 if bf16 else peak_fp32
                bench_training(config, device, batch, seq, bf16, phase, peak)
            else:
                bench_prediction(config, device, batch, seq, phase, peak_bf16)
        except torch.OutOfMemoryError:
            say(f"{what} batch {batch}: out of memory, skipped")
            torch.cuda.empty_cache()
    say("done")


if __name__ == "__main__":
    main()
