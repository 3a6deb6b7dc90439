"""The LoRA wrap of the untuned classifier (peft), and its parameter count."""

from __future__ import annotations

from yelp_lora.config import LoraSettings
from yelp_lora.errors import ConfigError


def apply_lora(model, lora: LoraSettings):
    from peft import LoraConfig, TaskType, get_peft_model

    # peft adapts the modules whose name is, or ends with, a target; a misspelt one would simply adapt
    # fewer modules than asked.
    names = [name for name, _ in model.named_modules()]
    unmatched = [target for target in lora.target_modules if not any(n == target or n.endswith("." + target) for n in names)]
    if unmatched:
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if type(module).__name__ == "Linear"})
        raise ConfigError(f"lora.target_modules: no module of the base model is named {', '.join(map(repr, unmatched))} "
                          f"(its linear layers: {', '.join(linear)})")

    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,  # keeps the classifier head trainable and saved (modules_to_save)
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias=lora.bias,
    )
    return get_peft_model(model, config)


def parameter_line(peft_model) -> str:
    """PEFT's own count, printed the way `print_trainable_parameters` prints it."""
    trainable, total = peft_model.get_nb_trainable_parameters()
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"
