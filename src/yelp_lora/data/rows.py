"""Which rows are usable: a labelled split for training and evaluation, review texts for prediction.

Both read through `readers` and share one policy: a bad row stops the job with its file, row and
problem, unless --skip-bad-rows skips it (training: counted in run.json; prediction: written with
its error).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from yelp_lora.artifacts import SplitSummary
from yelp_lora.config import NUM_LABELS
from yelp_lora.data.readers import Table, open_table
from yelp_lora.errors import DataError, shown

log = logging.getLogger(__name__)

# Real reviews stay under ~5,000 characters; a far longer "review" is a broken file.
MAX_TEXT_CHARS = 100_000
MAX_REPORTED_PROBLEMS = 10


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

    def summary(self) -> SplitSummary:
        return SplitSummary(
            name=self.name,
            source=self.source,
            rows=len(self),
            label_counts=self.label_counts(),
            fingerprint=self.fingerprint(),
            skipped_bad_rows=len(self.skipped),
            skipped_examples=self.skipped[:MAX_REPORTED_PROBLEMS],
            duplicates_dropped=self.duplicates_dropped,
        )


# ---------------------------------------------------------------- row checks


_INTEGER = re.compile(r"[+-]?[0-9]{1,6}")  # ASCII digits only: int() would also take '²' or '١'


def check_label(value: object, stars: bool) -> int | str:
    """The 0-4 label, or a sentence saying what is wrong with the value (whatever its type or size)."""
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
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        number = int(value.strip())
    else:
        return f"{column} {shown(value)} is not an integer {low}-{high}"
    if not low <= number <= high:
        return f"{column} {shown(number)} is out of range {low}-{high}"
    return number - low


# Bytes that were not valid UTF-8, as surrogateescape decoding leaves them.
_UNDECODED_BYTE = re.compile("[\udc80-\udcff]")


def text_problem(text: object) -> str | None:
    """What makes `text` unusable as a review (missing, empty, NUL bytes, bad UTF-8, too long), or None."""
    if text is None:
        return "missing text"
    if not isinstance(text, str):
        return f"text is of type {type(text).__name__}, not a string"
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


def check_input_text(where: str, text: object) -> str:
    """A prediction input's text, or a DataError naming where it is and what is wrong."""
    problem = text_problem(text)
    if problem:
        raise DataError(f"{where}: {problem}")
    return text  # type: ignore[return-value]


# ---------------------------------------------------------------- labelled splits


class _RowCollector:
    """Checks rows one by one and keeps the good ones; bad ones stop the load or are counted."""

    def __init__(self, name: str, split: str, source: str, skip_bad_rows: bool):
        self.name, self.split, self.source, self.skip = name, split, source, skip_bad_rows
        self.texts: list[str] = []
        self.labels: list[int] = []
        self.row_ids: list[str] = []
        self.problems: list[str] = []
        self.duplicates = 0
        self.conflicts = 0  # rows whose text came before with another label
        self._seen: set[tuple[str, int]] = set()

    def problem(self, where: str, what: str) -> None:
        self.problems.append(f"{self.name}: {where}: {what}")

    def add(self, where: str, row_id: str, text: object, label: object, *, stars: bool) -> None:
        checked_label = check_label(label, stars)
        if isinstance(checked_label, str):
            return self.problem(where, checked_label)
        problem = text_problem(text)
        if problem:
            return self.problem(where, problem)
        key = (text, checked_label)
        if key in self._seen:
            self.duplicates += 1
            return
        if any((text, other) in self._seen for other in range(NUM_LABELS) if other != checked_label):
            self.conflicts += 1
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
        if self.conflicts:
            log.warning("%s: %d row(s) repeat an earlier row's text with another label; both are kept", self.name, self.conflicts)
        return Split(
            name=self.split,
            source=self.source,
            texts=self.texts,
            labels=self.labels,
            row_ids=self.row_ids,
            skipped=self.problems,
            duplicates_dropped=self.duplicates,
        )


def labelled_split(table: Table, split: str, source: str, skip_bad_rows: bool) -> Split:
    """The usable (text, label) rows of a table, duplicates dropped, as split `split`."""
    table.require(label=True)
    collector = _RowCollector(table.name, split, source, skip_bad_rows)
    zeros = 0  # star ratings of 0, in a file read as stars without a header saying so
    for row in table.rows:
        if row.problem:
            collector.problem(row.where, row.problem)
            continue
        values = row.values
        stars = "label" not in values and "stars" in values
        if "text" not in values or not ("label" in values or stars):
            missing = "text" if "text" not in values else "label"
            has = ", ".join(shown(name) for name in sorted(values)[:10]) or "none"
            collector.problem(row.where, f"missing column '{missing}' (has {has})")
            continue
        if table.assumed_stars and check_label(values["stars"], stars=False) == 0:
            zeros += 1
        if not stars and "stars" in values:  # both given: reading one would silently drop the other
            label, from_stars = check_label(values["label"], stars=False), check_label(values["stars"], stars=True)
            if isinstance(label, int) and isinstance(from_stars, int) and label != from_stars:
                collector.problem(row.where, f"label {label} and stars {from_stars + 1} disagree "
                                             "(label is stars - 1)")
                continue
        collector.add(row.where, row.row_id, values["text"], values["stars" if stars else "label"], stars=stars)
    if zeros and 4 not in collector.labels:  # 0s and no 5 stars: labels 0-4, each read one class off
        raise DataError(f"{table.name}: {zeros} row(s) rated 0 and none 5, in a file without a header line, which is "
                        "read as yelp_review_full's headerless \"stars\",\"text\" rows (1-5 stars): for labels 0-4, "
                        "add the header line label,text")
    return collector.finish()


# ---------------------------------------------------------------- prediction input


class InputText(NamedTuple):
    """One prediction input: where it is, its text, and what makes it unusable (None when usable)."""

    where: str
    text: object
    problem: str | None


def require_input_file(path: Path) -> None:
    if path.is_dir():
        raise DataError(f"input {path} is a directory: give one file of reviews")
    if not path.exists():
        raise DataError(f"input file not found: {path}")
    if not path.is_file():  # a device, a pipe: read once, it could not be resumed or hashed
        raise DataError(f"input {path} is not a regular file: give one file of reviews")


def iter_texts(path: Path) -> Iterator[InputText]:
    """Prediction input streamed in bounded memory whatever the file size: CSV / JSONL / Parquet
    with a 'text' column, or any other file as one review per line."""
    require_input_file(path)
    table = open_table(path, lines_as_text=True)
    table.require(label=False)
    for row in table.rows:
        if row.problem:
            yield InputText(row.where, None, row.problem)
        elif "text" not in row.values:
            yield InputText(row.where, None, "expected an object with a 'text' field")
        else:
            text = row.values["text"]
            yield InputText(row.where, text, text_problem(text))
