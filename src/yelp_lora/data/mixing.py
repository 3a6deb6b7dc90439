"""The rows a run trains and validates on: data.source's train split, with validation carved out of
it first, plus any extra training sources, each drawn by its own size, fraction or balance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from yelp_lora.artifacts import SourceRows
from yelp_lora.config import DataConfig, TrainSource
from yelp_lora.data.rows import Split
from yelp_lora.data.sampling import balanced_indices, stratified_indices, train_val_split
from yelp_lora.data.sources import load_split, resolve_source
from yelp_lora.errors import DataError


@dataclass
class TrainingRows:
    train: Split
    validation: Split
    primary: Split  # data.source's whole train split, as read
    sources: list[SourceRows]


def training_rows(data: DataConfig, seed: int) -> TrainingRows:
    source = resolve_source(data.source)
    primary = load_split(source, "train", skip_bad_rows=data.skip_bad_rows)
    train, validation = train_val_split(primary, data.val_samples, data.train_samples, seed)
    sources = [SourceRows(**train.summary().model_dump(), file_rows=len(primary))]
    seen = set(validation.texts) | set(train.texts)
    parts = [train]
    for number, extra in enumerate(data.extra_train, start=1):
        rows = load_split(_extra_path(extra), "train", skip_bad_rows=data.skip_bad_rows)
        drawn = rows.select(_draw(extra, rows, seed + number), f"extra {number}")
        kept = [i for i, text in enumerate(drawn.texts) if text not in seen]
        part = drawn.select(kept)
        seen.update(part.texts)
        part.row_ids = [f"{part.source}:{row_id}" for row_id in part.row_ids]
        summary = part.summary().model_dump() | {
            "skipped_bad_rows": len(rows.skipped), "skipped_examples": rows.skipped[:10],
            "duplicates_dropped": rows.duplicates_dropped,
        }
        sources.append(SourceRows(**summary, file_rows=len(rows), overlap_dropped=len(drawn) - len(kept)))
        parts.append(part)
    if len(parts) > 1:
        train = Split(
            name="train", source=" + ".join(part.source for part in parts),
            texts=[t for part in parts for t in part.texts], labels=[y for part in parts for y in part.labels],
            row_ids=[r for part in parts for r in part.row_ids],
        )
    return TrainingRows(train, validation, primary, sources)


def _extra_path(extra: TrainSource) -> str:
    """The extra source, refused if it is, or looks like, a test split: test rows are never trained on."""
    resolved = resolve_source(extra.source)
    path = Path(resolved).expanduser()
    stem = path.stem.lower()
    if path.is_file() and (stem == "test" or stem.endswith(("_test", "-test", ".test"))):
        raise DataError(
            f"extra training source {extra.source}: its name says it is a test split, and test rows are "
            "for evaluation only; rename it if it really holds training rows"
        )
    return resolved


def _draw(extra: TrainSource, rows: Split, seed: int):
    n = extra.samples if extra.fraction is None else max(1, round(extra.fraction * len(rows)))
    if extra.balance:
        return balanced_indices(rows.labels, n, seed)
    return stratified_indices(rows.labels, n, seed)
