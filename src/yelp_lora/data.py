"""Reading, checking, sampling and tokenising labelled reviews.

Sources: a hub data set id (through `datasets`), a directory holding train and test files,
or one file that serves as whichever split a command needs. Formats: CSV with a
`label,text` header (0-4), the original headerless yelp_review_full CSV (`"stars","text"`,
1-5), JSONL and Parquet. Every bad row is reported with its file, row and problem.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from yelp_lora.config import NUM_LABELS
from yelp_lora.progress import library_step

DEFAULT_HUB_DATASET = "yelp_review_full"
SHARED_DATA_DIR = Path("..") / "shared" / "data" / "yelp_review_full"
DATA_ENV = "YELP_LORA_DATA"
SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
# Real reviews stay under ~5,000 characters; a far longer "review" is a broken file.
MAX_TEXT_CHARS = 100_000
MAX_REPORTED_PROBLEMS = 10


class DataError(ValueError):
    """Input data that cannot be used as it is; the message names file, row and problem."""


@dataclass
class Split:
    """One split's rows, in file order, with where each came from."""

    name: str
    source: str
    texts: list[str]
    labels: list[int]
    row_ids: list[str]
    skipped: list[str] = field(default_factory=list)
    duplicates_dropped: int = 0

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, indices: "np.ndarray | list[int]", name: str | None = None) -> "Split":
        return Split(
            name=name or self.name,
            source=self.source,
            texts=[self.texts[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            row_ids=[self.row_ids[i] for i in indices],
        )

    def fingerprint(self) -> str:
        """sha256 of the row ids, labels and texts, in order: two runs saw the same rows iff equal."""
        digest = hashlib.sha256()
        for row_id, label, text in zip(self.row_ids, self.labels, self.texts):
            digest.update(f"{row_id}\t{label}\t{text}\n".encode("utf-8", "surrogatepass"))
        return digest.hexdigest()

    def label_counts(self) -> list[int]:
        return np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=NUM_LABELS).tolist()

    def summary(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "rows": len(self),
            "label_counts": self.label_counts(),
            "fingerprint": self.fingerprint(),
            "skipped_bad_rows": len(self.skipped),
            "skipped_examples": self.skipped[:MAX_REPORTED_PROBLEMS],
            "duplicates_dropped": self.duplicates_dropped,
        }


# ---------------------------------------------------------------- source resolution


def resolve_source(source: str) -> str:
    """Turn 'auto' into a concrete source: $YELP_LORA_DATA, then ../shared's copy, then the hub."""
    if source != "auto":
        return source
    if os.environ.get(DATA_ENV):
        return os.environ[DATA_ENV]
    if SHARED_DATA_DIR.is_dir():
        return str(SHARED_DATA_DIR.resolve())
    return DEFAULT_HUB_DATASET


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
        file = _split_file(path, split)
        return _read_file(file, split, skip_bad_rows)
    if path.is_file():
        return _read_file(path, split, skip_bad_rows)
    if _looks_like_path(source):
        raise DataError(f"data path not found: {source}")
    return _read_hub(source, split, skip_bad_rows)


# ---------------------------------------------------------------- row checking


class _RowCollector:
    """Checks rows one by one and keeps the good ones; bad ones stop the load or are counted."""

    def __init__(self, name: str, split: str, source: str, skip_bad_rows: bool):
        self.name, self.split, self.source, self.skip = name, split, source, skip_bad_rows
        self.texts: list[str] = []
        self.labels: list[int] = []
        self.row_ids: list[str] = []
        self.problems: list[str] = []
        self.duplicates = 0
        self._seen: set[tuple[str, int]] = set()

    def problem(self, where: str, what: str) -> None:
        self.problems.append(f"{self.name}: {where}: {what}")

    def add(self, where: str, row_id: str, text: object, label: object, *, stars: bool) -> None:
        checked_label = _check_label(label, stars)
        if isinstance(checked_label, str):
            return self.problem(where, checked_label)
        problem = text_problem(text)
        if problem:
            return self.problem(where, problem)
        key = (text, checked_label)
        if key in self._seen:
            self.duplicates += 1
            return
        self._seen.add(key)
        self.texts.append(text)  # type: ignore[arg-type]
        self.labels.append(checked_label)
        self.row_ids.append(row_id)

    def finish(self) -> Split:
        if self.problems and not self.skip:
            shown = "\n  ".join(self.problems[:MAX_REPORTED_PROBLEMS])
            more = len(self.problems) - MAX_REPORTED_PROBLEMS
            tail = f"\n  ... and {more} more" if more > 0 else ""
            raise DataError(
                f"{len(self.problems)} bad row(s) in {self.name}; nothing was trained or written "
                f"(--skip-bad-rows skips and counts them):\n  {shown}{tail}"
            )
        if not self.texts:
            raise DataError(f"{self.name} has no usable rows for the {self.split} split")
        return Split(
            name=self.split,
            source=self.source,
            texts=self.texts,
            labels=self.labels,
            row_ids=self.row_ids,
            skipped=self.problems,
            duplicates_dropped=self.duplicates,
        )


def _check_label(value: object, stars: bool) -> int | str:
    """The 0-4 label, or a sentence saying what is wrong with the value."""
    column = "stars" if stars else "label"
    low, high = (1, 5) if stars else (0, NUM_LABELS - 1)
    if value is None or (isinstance(value, str) and not value.strip()):
        return f"missing {column}"
    if isinstance(value, bool):
        return f"{column} {value!r} is not an integer {low}-{high}"
    if isinstance(value, (int, np.integer)):
        number = int(value)
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value.strip())
    else:
        return f"{column} {value!r} is not an integer {low}-{high}"
    if not low <= number <= high:
        return f"{column} {number} is out of range {low}-{high}"
    return number - low


# Bytes that were not valid UTF-8, as surrogateescape decoding leaves them.
_UNDECODED_BYTE = re.compile("[\udc80-\udcff]")


def text_problem(text: object) -> str | None:
    """What makes `text` unusable as a review (missing, empty, NUL bytes, bad UTF-8, too long), or None."""
    if text is None:
        return "missing text"
    if not isinstance(text, str):
        return f"text is a {type(text).__name__}, not a string"
    if not text.strip():
        return "empty text" if not text else "whitespace-only text"
    if "\x00" in text:
        return "text contains NUL bytes"
    if _UNDECODED_BYTE.search(text):
        return "text has bytes that are not valid UTF-8"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate (JSON allows "\ud800"): no tokenizer can read it
        return f"character {err.start} is an unpaired surrogate ({text[err.start]!a}), not valid Unicode"
    if len(text) > MAX_TEXT_CHARS:
        return f"text is {len(text):,} characters long, over the {MAX_TEXT_CHARS:,} limit"
    return None


# ---------------------------------------------------------------- file formats


def _read_file(path: Path, split: str, skip_bad_rows: bool) -> Split:
    suffix = path.suffix.lower()
    collector = _RowCollector(str(path), split, str(path), skip_bad_rows)
    try:
        if suffix == ".parquet":
            _read_parquet(path, collector)
        elif suffix in (".jsonl", ".json"):
            _read_jsonl(path, collector)
        else:
            _read_csv(path, collector)
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a data file") from None
    return collector.finish()


def _decoded(path: Path) -> str:
    # surrogateescape keeps undecodable bytes visible per row instead of failing the whole file.
    return path.read_bytes().decode("utf-8-sig", errors="surrogateescape")


# csv's default 128 KiB field limit would turn one over-long review into a whole-file
# "malformed CSV" error; lifted, the row check reports it (and --skip-bad-rows can skip it).
CSV_FIELD_LIMIT = 2**31 - 1


def _read_csv(path: Path, out: _RowCollector) -> None:
    csv.field_size_limit(CSV_FIELD_LIMIT)
    reader = csv.reader(io.StringIO(_decoded(path), newline=""), strict=True)
    header: list[str] | None = None
    columns: tuple[int, int, bool] | None = None  # (label index, text index, label is stars)
    try:
        for fields in reader:
            line = reader.line_num
            if columns is None:
                columns, header = _csv_columns(path, fields)
                if header is not None:
                    continue
            label_at, text_at, stars = columns
            expected = len(header) if header is not None else 2
            if len(fields) != expected:
                out.problem(f"line {line}", f"expected {expected} fields, found {len(fields)}")
                continue
            out.add(f"line {line}", f"{path.name}:{line}", fields[text_at], fields[label_at], stars=stars)
    except csv.Error as err:
        raise DataError(f"{path}: line {reader.line_num}: malformed CSV ({err}); check for an unclosed quote") from None
    if columns is None:
        raise DataError(f"{path}: empty file")


def _csv_columns(path: Path, first: list[str]) -> tuple[tuple[int, int, bool], list[str] | None]:
    names = [name.strip().lower() for name in first]
    if {"label", "stars", "text"} & set(names):
        label_column = "label" if "label" in names else "stars" if "stars" in names else None
        if "text" not in names or label_column is None:
            missing = "'text'" if "text" not in names else "'label' (0-4) or 'stars' (1-5)"
            raise DataError(f"{path}: line 1: header {first!r} has no {missing} column")
        return (names.index(label_column), names.index("text"), label_column == "stars"), names
    if len(first) == 2 and first[0].strip().isdigit():
        return (0, 1, True), None  # the original headerless yelp_review_full: "stars","text"
    raise DataError(
        f"{path}: line 1: cannot tell the columns; expected a 'label,text' header or "
        f"headerless '\"stars\",\"text\"' rows, found {first[:3]!r}"
    )


def _read_jsonl(path: Path, out: _RowCollector) -> None:
    for line_no, line in enumerate(_decoded(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            out.problem(f"line {line_no}", f"invalid JSON ({err.msg})")
            continue
        if not isinstance(record, dict):
            out.problem(f"line {line_no}", f"expected a JSON object, found {type(record).__name__}")
            continue
        stars = "label" not in record and "stars" in record
        if "text" not in record or not ("label" in record or stars):
            missing = "text" if "text" not in record else "label"
            out.problem(f"line {line_no}", f"missing column '{missing}' (has {sorted(record)})")
            continue
        out.add(f"line {line_no}", f"{path.name}:{line_no}", record["text"], record["stars" if stars else "label"], stars=stars)


def _read_parquet(path: Path, out: _RowCollector) -> None:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a broken file
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    _read_columns(table.column_names, table.to_pydict(), path.name, out)


def _read_columns(names: list[str], columns: dict, prefix: str, out: _RowCollector) -> None:
    if "text" not in names or not ({"label", "stars"} & set(names)):
        raise DataError(f"{out.name}: needs columns 'text' and 'label' (0-4) or 'stars' (1-5); has {names}")
    stars = "label" not in names
    labels = columns["stars" if stars else "label"]
    for index, (text, label) in enumerate(zip(columns["text"], labels)):
        out.add(f"row {index}", f"{prefix}:{index}", text, label, stars=stars)


def _read_hub(dataset_id: str, split: str, skip_bad_rows: bool) -> Split:
    import datasets

    try:
        data = datasets.load_dataset(dataset_id, split=split)
    except Exception as err:  # offline, unknown id, missing split: all end here
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(
            f"data source '{dataset_id}' is not a local file or directory, and no hub data set of that name "
            f"could be loaded (split '{split}'): {reason}"
        ) from None
    collector = _RowCollector(f"{dataset_id}[{split}]", split, f"hub:{dataset_id}", skip_bad_rows)
    _read_columns(data.column_names, data.to_dict(), f"{dataset_id}:{split}", collector)
    return collector.finish()


def iter_texts(path: Path) -> Iterator[tuple[str, str]]:
    """(row id, text) for prediction input, streamed in bounded memory whatever the file size.

    CSV/JSONL/Parquet with a 'text' column, or any other file as one review per line.
    """
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"input file not found: {path}")
    if suffix == ".parquet":
        yield from _iter_parquet_texts(path)
        return
    # surrogateescape: undecodable bytes stay visible to the per-row check instead of failing the file.
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="" if suffix == ".csv" else None) as handle:
        if suffix == ".csv":
            yield from _iter_csv_texts(path, handle)
            return
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if suffix not in (".jsonl", ".json"):
                yield f"line {line_no}", line.rstrip("\r\n")
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: line {line_no}: invalid JSON ({err.msg})") from None
            if not isinstance(record, dict) or "text" not in record:
                raise DataError(f"{path}: line {line_no}: expected an object with a 'text' field")
            yield f"line {line_no}", record["text"]


def _iter_parquet_texts(path: Path) -> Iterator[tuple[str, str]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a broken file
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    if "text" not in parquet.schema_arrow.names:
        raise DataError(f"{path}: no 'text' column (has {parquet.schema_arrow.names})")
    index = 0
    for batch in parquet.iter_batches(batch_size=4096, columns=["text"]):
        for text in batch.column(0).to_pylist():
            yield f"row {index}", text
            index += 1


def _iter_csv_texts(path: Path, handle) -> Iterator[tuple[str, str]]:
    csv.field_size_limit(CSV_FIELD_LIMIT)
    reader = csv.DictReader(handle, strict=True)
    try:
        names = reader.fieldnames
        if names is None or "text" not in [n.strip().lower() for n in names]:
            raise DataError(f"{path}: no 'text' column in the header {names}")
        column = next(n for n in names if n.strip().lower() == "text")
        for record in reader:
            yield f"line {reader.line_num}", record[column]
    except csv.Error as err:
        raise DataError(f"{path}: line {reader.line_num}: malformed CSV ({err})") from None


def check_input_text(where: str, text: object) -> str:
    """A prediction input's text, or a DataError naming where it is and what is wrong."""
    problem = text_problem(text)
    if problem:
        raise DataError(f"{where}: {problem}")
    return text  # type: ignore[return-value]


# ---------------------------------------------------------------- sampling


def stratified_indices(labels: list[int], n: int | None, seed: int) -> np.ndarray:
    """A seeded, label-stratified sample of n row indices (all rows, shuffled, when n is None or too big)."""
    rng = np.random.default_rng(seed)
    total = len(labels)
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
    val_idx = stratified_indices(train.labels, val_samples, seed)
    rest = np.setdiff1d(np.arange(len(train)), val_idx)
    rest_labels = [train.labels[i] for i in rest]
    train_idx = rest[stratified_indices(rest_labels, train_samples, seed)]
    return train.select(train_idx, "train"), train.select(val_idx, "validation")


def sample_split(split: Split, n: int | None, seed: int) -> Split:
    return split.select(stratified_indices(split.labels, n, seed))


# ---------------------------------------------------------------- tokenising


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
