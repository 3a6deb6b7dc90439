"""Token ids for training and validation, as a `datasets.Dataset` with each row's real length."""

from __future__ import annotations

from yelp_lora.data.rows import Split
from yelp_lora.util.progress import library_step


def tokenize(split: Split, tokenizer, max_length: int, pad_to_max_length: bool = False):
    """A `datasets.Dataset` with input_ids, attention_mask and labels (and its token lengths)."""
    import datasets

    dataset = datasets.Dataset.from_dict({"text": split.texts, "labels": split.labels})

    def encode(batch):
        encoded = tokenizer(
            batch["text"],
            truncation=True,
            max_length=max_length,
            padding="max_length" if pad_to_max_length else False,
        )
        encoded["length"] = [sum(mask) for mask in encoded["attention_mask"]]
        return encoded

    desc = f"Tokenising {split.name}"
    with library_step(desc, len(split), unit="examples"):
        return dataset.map(encode, batched=True, remove_columns=["text"], desc=desc)
