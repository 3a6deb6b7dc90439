"""What this machine offers, and what `auto` chooses on it: precision, attention and dropout kernels,
batch sizes, and the prediction backend. Every automatic per-machine choice is made here, each with
the measurement behind it (docs/performance.md), so that `train`, `predict`, `serve` and the MCP
tool choose alike and `yelp-lora bench` can print what was chosen and why. Two CPU kinds are
measured: AVX-512 BF16 / VNNI without AMX (an AMD EPYC) and AMX (an Intel Xeon); where a choice
was not measured on a kind, `auto` keeps the choice it made before there.

The one private name read here, `PretrainedConfig._attn_implementation` (transformers has no public
getter for the kernel a loaded model runs), is read nowhere else; tests/test_private_apis.py fails,
naming it, if an upgrade removes it.
"""

from __future__ import annotations

import importlib.util
import os
from typing import NamedTuple

import torch

from yelp_lora.errors import ConfigError

# Per-device training batches (train, eval) when the config leaves them to the device (null).
AUTO_TRAIN_BATCH = {"cpu": (16, 16), "cuda": (64, 128)}
# Rows per forward pass under group_by_length when micro_batch_size is null. CPU: measured best on
# the AMD EPYC and on the Intel Xeon with AMX alike (docs/performance.md); CUDA: the same quarter
# of its step, not yet measured on a GPU.
AUTO_MICRO_BATCH = {"cpu": 4, "cuda": 16}
# Each training batch's length is padded up to a multiple of this (1: to its longest text): far
# fewer distinct shapes, less peak memory. AVX-512 (AMD EPYC): 8 ran 9.5% and 13.5% faster than 1
# in two 1,536-row benches. AMX (Intel Xeon): 16 ran 16% and 11% faster than 1 in two 512-row
# benches, 5% ahead of 8 and 4% of 32 (AMX tiles hold 16 rows). GPUs: not measured, none.
PAD_MULTIPLE_AVX512 = 8
PAD_MULTIPLE_AMX = 16


def auto_pad_multiple(device: torch.device) -> int:
    if device.type != "cpu":
        return 1
    return PAD_MULTIPLE_AMX if has_amx() else PAD_MULTIPLE_AVX512


# Texts per prediction pass, measured on 500 length-sorted train.csv reviews: on CPUs small batches
# keep activations in cache and padding near zero. ONNX runs one text at a time: int8's dynamic
# quantization scales activations per batch, so in a larger batch a review's answer would depend
# on the reviews sent with it. OpenVINO takes ONNX's one review per pass (other sizes unmeasured),
# one review after another over every core.
AUTO_PREDICT_BATCH = {"cuda": 128, "cpu": 16, "onnx": 1, "openvino": 1}
ONNX_BACKENDS = ("onnx", "onnx-int8")
PREDICTION_BACKENDS = ("auto", "torch", *ONNX_BACKENDS, "openvino")


class AutoChoice(NamedTuple):
    setting: str
    value: str
    why: str


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_capabilities() -> dict:
    """The CPU's instruction sets as torch's cpuinfo sees them (avx512_bf16, amx_tile, ...)."""
    return dict(torch.cpu.get_capabilities())


def cpu_flags() -> set[str]:
    """The CPU's flags as Linux names them in /proc/cpuinfo (amx_tile, avx512_bf16, ...); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            return next((set(line.split(":", 1)[1].split()) for line in info if line.startswith("flags")), set())
    except OSError:
        return set()


def has_amx() -> bool:
    return bool(cpu_capabilities().get("amx_tile")) or "amx_tile" in cpu_flags()


def bf16_supported(device: torch.device) -> bool:
    """bf16 pays off only with hardware support: Ampere+ GPUs, or CPUs with AVX512-BF16 / AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    capabilities = cpu_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_tile"))


def attention_implementation(setting: str, device: torch.device) -> str:
    """'auto' -> the kernel measured fastest for training on `device`: sdpa on CUDA, eager on CPU (with
    our dropout kernel: 28.7 against 19.9 samples/s on the AMD EPYC, 32.6 against 23.0 on the AMX Xeon)."""
    if setting != "auto":
        return setting
    return "sdpa" if device.type == "cuda" else "eager"


def attention_kernel(model_config) -> str:
    """The attention kernel a loaded model runs (its config's private `_attn_implementation`)."""
    return model_config._attn_implementation


def predict_batch(backend: str, device: torch.device) -> int:
    """Texts per prediction pass when none is given, for a resolved backend on `device`."""
    return AUTO_PREDICT_BATCH[device.type if backend == "torch" else "onnx" if backend in ONNX_BACKENDS else backend]


def prediction_backend(requested: str, device: torch.device, *, bf16: bool = False) -> AutoChoice:
    """The backend that answers predictions: `requested` unless it is 'auto'.

    auto never trades answers for speed: int8 (which moves 4-7% of answers) and bf16 weights stay opt-in.
    OpenVINO stays opt-in too: its fp32 ran slower than ONNX Runtime's on both CPUs measured.
    """
    if requested not in PREDICTION_BACKENDS:
        raise ConfigError(f"backend {requested!r}: expected one of {', '.join(PREDICTION_BACKENDS)}")
    if bf16 and requested in ONNX_BACKENDS:  # it would run fp32 or int8 weights, not the bf16 asked for
        raise ConfigError(
            f"bf16 weights with backend {requested}: ONNX Runtime runs its export in "
            f"{'int8' if requested == 'onnx-int8' else 'fp32'}; ask for backend torch or openvino for bf16, or leave bf16 off"
        )
    if requested != "auto":
        return AutoChoice("prediction backend", requested, "as asked")
    if bf16:
        return AutoChoice("prediction backend", "torch", "bf16 weights were asked for, which the torch backend runs")
    if device.type == "cuda":
        return AutoChoice("prediction backend", "torch", "a GPU, which torch drives")
    if importlib.util.find_spec("onnxruntime") is None:
        return AutoChoice("prediction backend", "torch", "ONNX Runtime is not installed (the [onnx] extra)")
    return AutoChoice(
        "prediction backend", "onnx",
        "ONNX Runtime fp32 answered like torch fp32 (same macro-F1 on test.csv) at "
        + ("1.3x its speed on an AMX CPU" if has_amx() else "2.3x its speed on an AVX-512 CPU"),
    )


INT8_ATTENTION_ENV = "YELP_LORA_INT8_ATTENTION"  # fused or standard: overrides the per-CPU choice
INT8_ATTENTION_FORMS = ("fused", "standard")


def int8_attention() -> AutoChoice:
    """How the int8 ONNX graph computes attention; both forms give the same logits (tested)."""
    asked = os.environ.get(INT8_ATTENTION_ENV)
    if asked is not None:
        if asked not in INT8_ATTENTION_FORMS:
            raise ConfigError(f"${INT8_ATTENTION_ENV} {asked!r}: expected one of {', '.join(INT8_ATTENTION_FORMS)}")
        return AutoChoice("int8 attention", asked, f"as asked (${INT8_ATTENTION_ENV})")
    if has_amx():
        return AutoChoice(
            "int8 attention", "standard",
            "int8 Q/K/V matmuls and ONNX's standard Attention: +8% over ONNX Runtime's QAttention on an AMX CPU, the same logits",
        )
    return AutoChoice("int8 attention", "fused", "ONNX Runtime's QAttention: the standard form is not measured on this CPU kind")


def auto_choices(device: torch.device | None = None) -> list[AutoChoice]:
    """What every `auto` setting resolves to on this machine, and why."""
    device = device or pick_device()
    kind = "cuda" if device.type == "cuda" else "cpu"
    cpu = kind == "cpu"
    amx = cpu and has_amx()
    bf16 = bf16_supported(device)
    backend = prediction_backend("auto", device)
    hardware_bf16 = f"bf16 matmuls in hardware ({'AMX' if amx else 'AVX-512 BF16'})" if cpu else "a GPU with bf16"
    pad_multiple = auto_pad_multiple(device)
    return [
        AutoChoice(
            "train.precision", "bf16" if bf16 else "fp32",
            f"{hardware_bf16}: bf16 autocast" if bf16 else "no bf16 matmuls in hardware: emulated bf16 is slower than fp32",
        ),
        AutoChoice(
            "model.attention", attention_implementation("auto", device),
            "eager attention with our dropout kernel measured faster than SDPA for training on both CPU kinds (AMX: +42%)" if cpu
            else "fused SDPA kernels on the GPU",
        ),
        AutoChoice(
            "model.dropout_kernel", "fast" if cpu else "torch",
            "masks drawn 16 bits at a time: torch's per-element bernoulli_ was 47% of a CPU step; "
            "+27% over torch's dropout on an AMX CPU" if cpu
            else "torch's fused GPU kernels",
        ),
        AutoChoice(
            "train micro-batch", str(AUTO_MICRO_BATCH[kind]),
            "swept 2/4/8/16 on an AVX-512 and an AMX CPU: 4 fastest on both (fewer passes than 2, less padding than 8 or 16)"
            if cpu else "a quarter of the step, not yet measured on a GPU",
        ),
        AutoChoice(
            "train pad multiple", str(pad_multiple),
            ("measured on an AMX CPU: +11-16% over padding to the longest text in the bench, 26% in make demo; ahead of 8 and 32"
             if amx else "measured on an AVX-512 CPU: +9.5-13.5% over padding to the longest text, less memory")
            if cpu else "padded to the longest text: not yet measured on a GPU",
        ),
        backend,
        AutoChoice(
            "prediction batch", str(predict_batch(backend.value, device)),
            "one review per pass: every answer depends on its review alone" if backend.value != "torch"
            else "length-sorted batches small enough to stay in cache" if cpu else "large batches keep a GPU busy",
        ),
        int8_attention(),
    ]


def format_auto_choices(choices: list[AutoChoice]) -> str:
    width, value_width = (max(len(choice[field]) for choice in choices) for field in (0, 1))
    return "\n".join(f"  {choice.setting:<{width}}  {choice.value:<{value_width}}  {choice.why}" for choice in choices)
