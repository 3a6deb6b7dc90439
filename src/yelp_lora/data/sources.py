"""Where labelled reviews come from: a directory holding train and test files, one file that serves
as whichever split a command needs, or a hub data set id (through `datasets`)."""

from __future__ import annotations

import os
from pathlib import Path

from yelp_lora.data.readers import SUFFIXES, columns_table, open_table
from yelp_lora.data.rows import Split, labelled_split
from yelp_lora.errors import DataError

DEFAULT_HUB_DATASET = "yelp_review_full"
SHARED_DATA_DIR = Path("..") / "shared" / "data" / "yelp_review_full"
DATA_ENV = "YELP_LORA_DATA"


def resolve_source(source: str) -> str:
    """Turn 'auto' into a concrete source: $YELP_LORA_DATA, then ../shared's copy, then the hub. A local
    path is made absolute, so that the run records where its data is from any directory."""
    if source == "auto":
        source = os.environ.get(DATA_ENV) or ""
        if not source:
            return str(SHARED_DATA_DIR.resolve()) if SHARED_DATA_DIR.is_dir() else DEFAULT_HUB_DATASET
    path = Path(source).expanduser()
    return str(path.absolute()) if path.exists() else source


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).suffix.lower() in SUFFIXES


def _split_file(directory: Path, split: str) -> Path:
    candidates = [directory / f"{split}{suffix}" for suffix in SUFFIXES]
    found = [p for p in candidates if p.is_file()]
    if not found:
        names = ", ".join(p.name for p in candidates)
        raise DataError(f"data directory {directory} has no {split} split: expected one of {names}")
    return found[0]


def load_split(source: str, split: str, *, skip_bad_rows: bool = False) -> Split:
    """Load one split ('train' or 'test') from a hub id, a directory or a single file."""
    source = resolve_source(source)
    path = Path(source).expanduser()
    if path.is_dir():
        path = _split_file(path, split)
    if path.is_file():
        return labelled_split(open_table(path), split, str(path), skip_bad_rows)
    if path.exists():
        raise DataError(f"data path {source} is not a regular file or a directory")
    if _looks_like_path(source):
        raise DataError(f"data path not found: {source}")
    return _load_hub(source, split, skip_bad_rows)


def _load_hub(dataset_id: str, split: str, skip_bad_rows: bool) -> Split:
    import datasets

    try:
        data = datasets.load_dataset(dataset_id, split=split)
    except Exception as err:  # offline, unknown id, missing split: all end here
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        # The default source ('auto') ends here when no local copy was found: say where it looked.
        local = (f"; a local copy is read from ${DATA_ENV} or {SHARED_DATA_DIR} beside the current directory "
                 f"({Path.cwd()}), and neither is there") if resolve_source("auto") == dataset_id else ""
        raise DataError(
            f"data source '{dataset_id}' is not a local file or directory, and no hub data set of that name "
            f"could be loaded (split '{split}'): {reason}{local}"
        ) from None
    table = columns_table(f"{dataset_id}[{split}]", data.to_dict(), f"{dataset_id}:{split}")
    return labelled_split(table, split, f"hub:{dataset_id}", skip_bad_rows)
