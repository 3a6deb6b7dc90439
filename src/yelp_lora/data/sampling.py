"""Seeded, label-stratified samples: validation carved from train, test samples, training subsamples."""

from __future__ import annotations

import logging

import numpy as np

from yelp_lora.data.rows import Split
from yelp_lora.errors import DataError

log = logging.getLogger(__name__)


def stratified_indices(labels: list[int], n: int | None, seed: int, *, what: str) -> np.ndarray:
    """A seeded, label-stratified sample of n row indices (all rows, shuffled, when n is None or too
    big, which is logged naming `what` the rows are)."""
    rng = np.random.default_rng(seed)
    total = len(labels)
    if n is not None and n > total:
        log.warning("%s: %d rows asked for, %d there: using all of them", what, n, total)
    if n is None or n >= total:
        return rng.permutation(total)
    from sklearn.model_selection import train_test_split

    indices = np.arange(total)
    try:
        chosen, _ = train_test_split(indices, train_size=n, stratify=labels, random_state=seed)
    except ValueError:  # a class too small to stratify: fall back to a plain seeded sample
        chosen = rng.choice(total, size=n, replace=False)
    return np.asarray(chosen)


def train_val_split(train: Split, val_samples: int, train_samples: int | None, seed: int) -> tuple[Split, Split]:
    """Carve a stratified validation set out of train, then subsample training rows from the rest."""
    if val_samples >= len(train):
        raise DataError(f"val_samples={val_samples} leaves no training rows: the train split has {len(train)} rows")
    val_idx = stratified_indices(train.labels, val_samples, seed, what=f"{train.source} (validation)")
    rest = np.setdiff1d(np.arange(len(train)), val_idx)
    rest_labels = [train.labels[i] for i in rest]
    train_idx = rest[stratified_indices(rest_labels, train_samples, seed, what=f"{train.source} (training, after validation)")]
    return train.select(train_idx, "train"), train.select(val_idx, "validation")


def sample_split(split: Split, n: int | None, seed: int) -> Split:
    return split.select(stratified_indices(split.labels, n, seed, what=split.source))


def balanced_indices(labels: list[int], n: int | None, seed: int, *, what: str) -> np.ndarray:
    """A seeded draw of the same number of rows of every label present: n / labels each, or as
    many as the rarest label has when n is None or asks for more (logged, naming `what`)."""
    rng = np.random.default_rng(seed)
    labels_array = np.asarray(labels)
    present = np.unique(labels_array)
    rarest = min(int((labels_array == label).sum()) for label in present)
    per_label = rarest if n is None else min(rarest, n // len(present))
    if n is not None and per_label < n // len(present):
        log.warning("%s: a balanced draw of %d rows gets %d: the rarest label has %d rows",
                    what, n, per_label * len(present), rarest)
    if per_label < 1:
        raise DataError(
            f"a balanced draw of {n} rows over {len(present)} labels leaves none per label: ask for at least {len(present)}"
        )
    chosen = [rng.choice(np.flatnonzero(labels_array == label), size=per_label, replace=False) for label in present]
    return rng.permutation(np.concatenate(chosen))
