"""Token ids, cut the same way for training, evaluation and prediction."""

from __future__ import annotations

import numpy as np

from yelp_lora.data.rows import Split
from yelp_lora.util.progress import library_step


def cut(ids: list[int], max_length: int, head: int) -> list[int]:
    """The first `head` ids and as many of the last as fit in max_length (the last is [SEP]).

    With head = max_length - 1 this is exactly what the tokenizer's own `truncation=True` keeps.
    """
    if len(ids) <= max_length:
        return ids
    return ids[:head] + ids[len(ids) - (max_length - head):]


def encode(tokenizer, texts: list[str], max_length: int, head: int | None = None) -> tuple[list[list[int]], np.ndarray]:
    """(token ids cut to max_length, whether each text was cut), from one tokenizer pass.

    `head` is the number of ids kept from the start of a text that is cut (data config's
    kept_head); None keeps all but the closing one, as `truncation=True` does.
    """
    from transformers import logging as hf_logging

    head = max_length - 1 if head is None else head
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "longer than the model's maximum" notice: we cut below
    try:
        full = tokenizer(list(texts), truncation=False, add_special_tokens=True)["input_ids"] if texts else []
    finally:
        hf_logging.set_verbosity(verbosity)
    truncated = np.array([len(ids) > max_length for ids in full], dtype=bool)
    return [cut(ids, max_length, head) for ids in full], truncated


def tokenize(split: Split, tokenizer, max_length: int, head: int | None = None, pad_to_max_length: bool = False):
    """A `datasets.Dataset` with input_ids, attention_mask and labels (and its token lengths)."""
    import datasets

    dataset = datasets.Dataset.from_dict({"text": split.texts, "labels": split.labels})

    def encode_batch(batch):
        ids, _ = encode(tokenizer, batch["text"], max_length, head)
        encoded = tokenizer.pad(
            {"input_ids": ids}, padding="max_length" if pad_to_max_length else False, max_length=max_length,
        )
        encoded["length"] = [len(row) for row in ids]
        return dict(encoded)

    desc = f"Tokenising {split.name}"
    with library_step(desc, len(split), unit="examples"):
        return dataset.map(encode_batch, batched=True, remove_columns=["text"], desc=desc)
