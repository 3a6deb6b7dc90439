"""Every private transformers / torch name the package relies on, each used in one module only, each
checked here so that an upgrade that changes one fails loudly, naming it."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "yelp_lora"
# private name -> (the one module that uses it, what it must look like)
PRIVATE_APIS = {
    "_get_train_sampler": ("training/trainer.py", ["self", "train_dataset"]),
    "_get_output_dir": ("training/trainer.py", ["self", "trial"]),
    "_save_checkpoint": ("training/trainer.py", ["self", "model", "trial"]),
    "_init_training_state": (
        "training/trainer.py",
        ["self", "max_steps", "num_update_steps_per_epoch", "num_train_epochs", "resume_from_checkpoint", "trial"],
    ),
    "_attn_implementation": ("modeling/hardware.py", None),
}


def uses(name: str) -> list[str]:
    return sorted(
        path.relative_to(SOURCE).as_posix() for path in SOURCE.rglob("*.py")
        if re.search(rf"\b{name}\b", path.read_text(encoding="utf-8"))
    )


@pytest.mark.parametrize("name", PRIVATE_APIS)
def test_each_private_name_is_used_in_one_module(name):
    home, _ = PRIVATE_APIS[name]
    assert uses(name) == [home], f"private API {name} must be used in {home} only"


def test_no_other_private_library_names():
    """Private attributes reached through the libraries' modules (torch.cpu._x, transformers.x._y)."""
    pattern = re.compile(r"\b(?:torch|transformers|peft|datasets|onnxruntime)(?:\.\w+)*\._(?!_)\w+")
    found = {path.relative_to(SOURCE).as_posix(): pattern.findall(path.read_text(encoding="utf-8"))
             for path in SOURCE.rglob("*.py")}
    assert not {path: names for path, names in found.items() if names}


@pytest.mark.parametrize("name", [n for n, (_, params) in PRIVATE_APIS.items() if params])
def test_the_trainer_methods_we_override_still_exist(name):
    from transformers import Trainer

    method = getattr(Trainer, name, None)
    assert method is not None, f"transformers.Trainer.{name} is gone: training/trainer.py overrides it"
    expected = PRIVATE_APIS[name][1]
    assert list(inspect.signature(method).parameters) == expected, (
        f"transformers.Trainer.{name} changed its signature: training/trainer.py overrides it as {expected}"
    )


def test_the_attention_kernel_is_still_readable(tiny_bert_dir):
    from yelp_lora.modeling.base import build_classifier
    from yelp_lora.modeling.hardware import attention_kernel

    for kernel in ("eager", "sdpa"):
        model = build_classifier(str(tiny_bert_dir), seed=1, attention=kernel)
        assert attention_kernel(model.config) == kernel, (
            "PretrainedConfig._attn_implementation no longer names the kernel: modeling/hardware.py reads it"
        )
