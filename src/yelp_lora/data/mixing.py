"""The rows a run trains and validates on: data.source's train split, with validation carved out of
it first, plus any extra training sources, each drawn by its own size, fraction or balance."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from yelp_lora.artifacts import RunRecord, SourceRows
from yelp_lora.config import LABEL_NAMES, NUM_LABELS, DataConfig, TrainSource
from yelp_lora.data.rows import MAX_REPORTED_PROBLEMS, Split
from yelp_lora.data.sampling import balanced_indices, stratified_indices, train_val_split
from yelp_lora.data.readers import SUFFIXES
from yelp_lora.data.sources import load_split, resolve_source
from yelp_lora.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class TrainingRows:
    train: Split
    validation: Split
    primary: Split  # data.source's whole train split, as read
    sources: list[SourceRows]


def training_rows(data: DataConfig, seed: int) -> TrainingRows:
    source = resolve_source(data.source)
    _refuse_test_file(Path(source).expanduser(), f"data source {data.source}")
    primary = load_split(source, "train", skip_bad_rows=data.skip_bad_rows)
    train, validation = train_val_split(primary, data.val_samples, data.train_samples, seed)
    sources = [_source_rows(train, primary)]
    seen = set(validation.texts) | set(train.texts)
    parts = [train]
    for number, extra in enumerate(data.extra_train, start=1):
        path = _extra_path(extra, source)
        try:
            rows = load_split(path, "train", skip_bad_rows=data.skip_bad_rows)
        except DataError as err:
            raise DataError(f"extra training source {extra.source} (--extra-train, data.extra_train): {err}") from None
        # Rows already there are left out before the draw, so its size and balance hold for what is added.
        fresh = rows.select([i for i, text in enumerate(rows.texts) if text not in seen], f"extra {number}")
        if not len(fresh):
            raise DataError(
                f"extra training source {extra.source} adds no rows: all {len(rows)} of its rows are validation "
                "or training rows already (is it data.source itself?)"
            )
        try:
            part = fresh.select(_draw(extra, fresh, len(rows), seed + number))
        except DataError as err:
            raise DataError(f"extra training source {extra.source}: {err}") from None
        seen.update(part.texts)
        part.row_ids = [f"{part.source}:{row_id}" for row_id in part.row_ids]
        sources.append(_source_rows(part, rows, overlap_dropped=len(rows) - len(fresh)))
        parts.append(part)
    if len(parts) > 1:
        train = Split(
            name="train", source=" + ".join(part.source for part in parts),
            texts=[t for part in parts for t in part.texts], labels=[y for part in parts for y in part.labels],
            row_ids=[r for part in parts for r in part.row_ids],
        )
    _check_labels(train, source)
    return TrainingRows(train, validation, primary, sources)


def _check_labels(train: Split, source: str) -> None:
    """Refuse training rows of one label (nothing to tell apart); name the labels no row has."""
    present = sorted(set(train.labels))
    if len(present) < 2:
        raise DataError(f"the training rows from {source} are all {LABEL_NAMES[present[0]]} (label {present[0]}): "
                        "a classifier needs rows of at least two labels")
    missing = [f"{LABEL_NAMES[label]} ({label})" for label in range(NUM_LABELS) if label not in present]
    if missing:
        log.warning("the training rows from %s hold no %s reviews: the adapter never sees one", source, ", ".join(missing))


def run_training_rows(record: RunRecord, source: str | None = None) -> tuple[Split, Split]:
    """(train, validation) exactly as a recorded run drew them, read from where run.json says its data
    was or from `source` if it has moved since; refuses if they are not the rows it recorded."""
    config = record.config
    source = source or record.resolved.data_source
    rows = training_rows(config.data.model_copy(update={"source": source}), config.train.seed)
    # An extra source's row ids carry its path; read from a moved copy, they take back the path the
    # run recorded, so that the fingerprint compares the rows themselves.
    moved = {now.source: then.source for now, then in zip(rows.sources[1:], record.data.sources[1:]) if now.source != then.source}
    if moved:
        rows.train.row_ids = [_recorded_id(row_id, moved) for row_id in rows.train.row_ids]
    expected = record.data.train.fingerprint
    if rows.train.fingerprint() != expected:
        raise DataError(
            f"cannot rebuild the adapter's training rows from {source}: their fingerprint is "
            f"{rows.train.fingerprint()[:16]}…, run.json recorded {expected[:16]}… (the data or run.json changed "
            "since training), so they are not the rows the adapter was trained on"
        )
    return rows.train, rows.validation


def _recorded_id(row_id: str, moved: dict[str, str]) -> str:
    for now, then in moved.items():
        if row_id.startswith(f"{now}:"):
            return then + row_id[len(now):]
    return row_id


def _source_rows(part: Split, file: Split, overlap_dropped: int = 0) -> SourceRows:
    """One source's entry in run.json: the rows it gave, and what its file had skipped and deduplicated."""
    summary = part.summary().model_dump() | {
        "skipped_bad_rows": len(file.skipped), "skipped_examples": file.skipped[:MAX_REPORTED_PROBLEMS],
        "duplicates_dropped": file.duplicates_dropped,
    }
    return SourceRows(**summary, file_rows=len(file), overlap_dropped=overlap_dropped)


def looks_like_test(path: Path) -> bool:
    """Named as a test split: test, or a name ending in _test, -test or .test, whatever the suffix."""
    stem = path.stem.lower()
    return stem == "test" or stem.endswith(("_test", "-test", ".test"))


def _refuse_test_file(path: Path, what: str) -> None:
    """Test rows are never trained on. A link is judged by its target's name too (train.csv -> test.csv)."""
    if path.is_file() and (looks_like_test(path) or looks_like_test(path.resolve())):
        raise DataError(f"{what}: its name says it is a test split, and test rows are for evaluation only; "
                        "rename it if it really holds training rows")


def _extra_path(extra: TrainSource, primary: str) -> str:
    """The extra source, refused if it is, or looks like, a test split: test rows are never trained on.

    A relative file name is looked up in data.source's directory first, so a preset can name a file
    beside the train split wherever $YELP_LORA_DATA or ../shared puts it, then where the command runs.
    """
    beside = Path(primary) / extra.source
    if not Path(extra.source).expanduser().is_absolute() and Path(primary).is_dir() and beside.is_file():
        resolved = str(beside)
    else:
        resolved = resolve_source(extra.source)
    path = Path(resolved).expanduser()
    if not path.exists() and path.suffix.lower() in SUFFIXES:  # a file name, not a hub id
        if path.is_absolute():
            where = f"not found: {path}"
        else:
            where = f"not found in {Path.cwd()}" + (f" nor beside data.source ({beside})" if Path(primary).is_dir() else "")
        raise DataError(f"extra training source {extra.source} (--extra-train, data.extra_train): {where}; "
                        "--set data.extra_train=[] trains without extra sources")
    _refuse_test_file(path, f"extra training source {extra.source}")
    return resolved


def _draw(extra: TrainSource, rows: Split, file_rows: int, seed: int):
    """Row indices into `rows`: extra.samples of them, or extra.fraction of the source's file_rows."""
    n = extra.samples if extra.fraction is None else max(1, round(extra.fraction * file_rows))
    if extra.balance:
        return balanced_indices(rows.labels, n, seed, what=extra.source)
    return stratified_indices(rows.labels, n, seed, what=extra.source)
