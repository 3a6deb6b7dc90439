"""What this machine offers: the device, bf16 support, and the attention kernel to train with.

The one private name read here, `PretrainedConfig._attn_implementation` (transformers has no public
getter for the kernel a loaded model runs), is read nowhere else; tests/test_private_apis.py fails,
naming it, if an upgrade removes it.
"""

from __future__ import annotations

import torch


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_capabilities() -> dict:
    """The CPU's instruction sets as torch's cpuinfo sees them (avx512_bf16, amx_tile, ...)."""
    return dict(torch.cpu.get_capabilities())


def bf16_supported(device: torch.device) -> bool:
    """bf16 pays off only with hardware support: Ampere+ GPUs, or CPUs with AVX512-BF16 / AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    capabilities = cpu_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_tile"))


def attention_implementation(setting: str, device: torch.device) -> str:
    """'auto' -> the kernel measured fastest for training on `device`: sdpa on CUDA, eager on CPU."""
    if setting != "auto":
        return setting
    return "sdpa" if device.type == "cuda" else "eager"


def attention_kernel(model_config) -> str:
    """The attention kernel a loaded model runs (its config's private `_attn_implementation`)."""
    return model_config._attn_implementation
