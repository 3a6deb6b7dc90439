"""Token ids, cut the same way for training, evaluation and prediction (or, for prediction that asks
for it, a long text read as overlapping windows instead of cut)."""

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


def _token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Every text's full token ids, [CLS] and [SEP] included, uncut, from one tokenizer pass.

    verbose=False leaves out the "longer than the model's maximum" notice (we cut or window below)
    without setting transformers' global verbosity, which concurrent callers would race on.
    """
    return tokenizer(list(texts), truncation=False, add_special_tokens=True, verbose=False)["input_ids"] if texts else []


def encode(tokenizer, texts: list[str], max_length: int, head: int | None = None) -> tuple[list[list[int]], np.ndarray]:
    """(token ids cut to max_length, whether each text was cut), from one tokenizer pass.

    `head` is the number of ids kept from the start of a text that is cut (data config's
    kept_head); None keeps all but the closing one, as `truncation=True` does.
    """
    head = max_length - 1 if head is None else head
    full = _token_ids(tokenizer, texts)
    truncated = np.array([len(ids) > max_length for ids in full], dtype=bool)
    return [cut(ids, max_length, head) for ids in full], truncated


def pad(rows: list[list[int]], pad_id: int, side: str = "right") -> dict[str, np.ndarray]:
    """input_ids and attention_mask [len(rows), longest] int64, as `tokenizer.pad` builds them for
    BERT, at an eighth of its cost (20 against 161 us a row): prediction pads every review on its own."""
    width = max(map(len, rows))
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for row, ids in enumerate(rows):
        span = slice(0, len(ids)) if side == "right" else slice(width - len(ids), width)
        input_ids[row, span] = ids
        attention_mask[row, span] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def window_starts(body_length: int, span: int, max_windows: int) -> list[int]:
    """Where each window's slice of a text's `body_length` ids (its ids without [CLS] and [SEP]) begins.

    The fewest windows of `span` ids, at most `max_windows`, that reach from the first id to the
    last with neighbours overlapping by at least half a window (a stride of span // 2 or less),
    spread evenly: the first starts at the text's first id, the last ends at its last. Past
    max_windows the stride grows instead, so a very long text still gets its start and end read
    but the windows may leave gaps between them (the text is then reported as truncated).
    """
    if body_length <= span:
        return [0]
    last = body_length - span
    count = min(max_windows, 1 + -(-last // max(span // 2, 1)))
    if count == 1:
        return [0]
    return [round(i * last / (count - 1)) for i in range(count)]


def encode_windows(
    tokenizer, texts: list[str], max_length: int, max_windows: int
) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
    """(each window's ids, the text each window belongs to, whether each text was only partly read).

    A text that fits in max_length is one window, exactly as `encode` gives it. A longer one is read
    as overlapping windows (`window_starts`), each [CLS] + its slice of the text + [SEP]: max_length
    ids, windows of one text in order, texts in order.
    """
    span = max_length - 2
    windows, owners, partly_read = [], [], []
    for index, ids in enumerate(_token_ids(tokenizer, texts)):
        if len(ids) <= max_length:
            windows.append(ids)
            owners.append(index)
            partly_read.append(False)
            continue
        first, body, closing = ids[0], ids[1:-1], ids[-1]
        starts = window_starts(len(body), span, max_windows)
        windows += [[first, *body[start : start + span], closing] for start in starts]
        owners += [index] * len(starts)
        partly_read.append(any(later - earlier > span for earlier, later in zip(starts, starts[1:])))
    return windows, np.array(owners, dtype=np.int64), np.array(partly_read, dtype=bool)


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
