"""The LoRA wrap of the untuned classifier (peft), and its parameter count."""

from __future__ import annotations

from yelp_lora.config import LoraSettings


def apply_lora(model, lora: LoraSettings):
    from peft import LoraConfig, TaskType, get_peft_model

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
