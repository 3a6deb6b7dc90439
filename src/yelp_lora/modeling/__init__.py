"""The model: the frozen base (base), its LoRA wrap (lora), fast dropout (dropout), what the
machine offers (hardware) and batched inference (forward)."""
