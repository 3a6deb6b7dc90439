"""One streaming reader for every file format, used by training and by prediction alike.

CSV (a header naming its columns, or the original headerless yelp_review_full `"stars","text"`
rows), JSONL, Parquet (row group by row group), a hub data set's columns, or, for prediction
input, any other file as one review per line. One error policy: a problem with the whole file
(unreadable, columns missing, a quote never closed) is a DataError at once, naming the file; a
problem with one row (an invalid JSON line, a wrong number of fields) comes back as that row's
`problem`, and the caller stops on it, naming file and row, or skips and counts it under
--skip-bad-rows.
"""

from __future__ import annotations

import csv
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, TextIO

from yelp_lora.errors import DataError, shown

SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
# Reading is bounded whatever a file holds: no line, field or row group is built past these.
# A review over the row check's own limit (rows.MAX_TEXT_CHARS) is still read, to be reported
# as that row's problem; a line past MAX_LINE_CHARS (a broken or hostile file) is not.
MAX_LINE_CHARS = 8_000_000
# csv's own default (128 Ki characters) would turn one over-long review into a whole-file error;
# it is raised to MAX_LINE_CHARS only while this module parses a row, never for the process.
CSV_FIELD_LIMIT = MAX_LINE_CHARS
MAX_ROW_GROUP_BYTES = 512 * 2**20  # uncompressed bytes of a Parquet row group's columns we read
PARQUET_BATCH_ROWS = 4096
LABEL_COLUMNS = ("label", "stars")
NEEDS_LABEL = "'label' (0-4) or 'stars' (1-5)"


@dataclass(frozen=True)
class Row:
    """One row as read: where it is ('line 12', 'row 3'), a stable id, its values by column, or what is wrong."""

    where: str
    row_id: str
    values: dict[str, object] = field(default_factory=dict)
    problem: str | None = None


@dataclass
class Table:
    """An opened source: its name for messages, its columns (None where each row has its own, as in
    JSONL), whether they came from a header line, and its rows, read as they are iterated."""

    name: str
    columns: list[str] | None
    rows: Iterator[Row]
    header_line: bool = False
    assumed_stars: bool = False  # no header: read as yelp_review_full's "stars","text" rows

    def require(self, *, label: bool) -> None:
        """DataError unless the columns hold a text (and, with `label`, a label or star rating)."""
        if self.columns is None:
            return  # checked row by row
        missing_text = "text" not in self.columns
        missing_label = label and not set(LABEL_COLUMNS) & set(self.columns)
        if not (missing_text or missing_label):
            return
        if self.header_line:
            missing = "'text'" if missing_text else NEEDS_LABEL
            raise DataError(f"{self.name}: line 1: header {self.columns!r} has no {missing} column")
        needs = f"columns 'text' and {NEEDS_LABEL}" if label else "a 'text' column"
        raise DataError(f"{self.name}: needs {needs}; has {self.columns}")


COMPRESSED_STARTS = {b"\x1f\x8b": "gzip", b"PK\x03\x04": "zip", b"BZh": "bz2", b"\xfd7zXZ": "xz", b"(\xb5/\xfd": "zstd"}


def _refuse_compressed(path: Path) -> None:
    """A compressed file read as text would give rows of binary noise: say what it is instead."""
    with open(path, "rb") as raw:
        start = raw.read(6)
    kind = next((name for magic, name in COMPRESSED_STARTS.items() if start.startswith(magic)), None)
    if kind:
        raise DataError(f"{path} is compressed ({kind}): decompress it first")


def _unrecognised(path: Path, first: list[str]) -> str:
    """Why a CSV's first line names no columns: JSON lines say so; else what was found."""
    with open(path, "rb") as raw:
        start = raw.read(4)
    if start.lstrip().startswith(b"{"):
        return f"{path} looks like JSON lines: name it {path.stem}.jsonl"
    return (f"{path}: line 1: cannot tell the columns; expected a header with a 'text' column (and {NEEDS_LABEL} "
            f"to train on) or headerless '\"stars\",\"text\"' rows, found {', '.join(shown(name) for name in first[:3])}")


def open_table(path: Path, *, lines_as_text: bool = False) -> Table:
    """A file as a Table by its suffix; with `lines_as_text`, a file of another suffix is one text per line."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return _parquet_table(path)
        _refuse_compressed(path)
        if suffix in (".jsonl", ".json"):
            return Table(str(path), None, _jsonl_rows(path))
        if suffix == ".csv" or not lines_as_text:
            return _csv_table(path)
        return Table(str(path), ["text"], _line_rows(path))
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a data file") from None


def columns_table(name: str, columns: dict[str, list], id_prefix: str) -> Table:
    """A Table over in-memory columns (a hub data set's)."""
    names = list(columns)

    def rows() -> Iterator[Row]:
        for index, values in enumerate(zip(*columns.values())):
            yield Row(f"row {index}", f"{id_prefix}:{index}", dict(zip(names, values)))

    return Table(name, names, rows())


def _open_text(path: Path, newline: str | None):
    # surrogateescape keeps undecodable bytes visible per row instead of failing the whole file.
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline=newline)


_CSV_LIMIT_LOCK = threading.Lock()


def _csv_rows(reader) -> Iterator[list[str]]:
    """The reader's rows, each parsed with the field limit raised to CSV_FIELD_LIMIT and restored after."""
    while True:
        with _CSV_LIMIT_LOCK:
            previous = csv.field_size_limit(CSV_FIELD_LIMIT)
            try:
                fields = next(reader, None)
            finally:
                csv.field_size_limit(previous)
        if fields is None:
            return
        yield fields


def _bounded_lines(handle: TextIO, path: Path) -> Iterator[str]:
    """The file's lines, refusing (DataError) one longer than MAX_LINE_CHARS before it is read whole."""
    number = 0
    while line := handle.readline(MAX_LINE_CHARS + 1):
        number += 1
        if len(line) > MAX_LINE_CHARS:
            raise DataError(f"{path}: line {number} is over {MAX_LINE_CHARS:,} characters; not a review file")
        yield line


def _csv_table(path: Path) -> Table:
    handle = _open_text(path, newline="")
    reader = csv.reader(_bounded_lines(handle, path), strict=True)
    try:
        first = next(_csv_rows(reader), None)
    except (csv.Error, DataError) as err:
        handle.close()
        raise _malformed(path, reader, err) from None
    if first is None:
        handle.close()
        raise DataError(f"{path}: empty file")
    names = [name.strip().lower() for name in first]
    if {"text", *LABEL_COLUMNS} & set(names):
        header, pending = names, []
    elif len(first) == 2 and first[0].strip().isdigit():
        header, pending = ["stars", "text"], [first]  # the original headerless yelp_review_full
    else:
        handle.close()
        raise DataError(_unrecognised(path, first))

    headerless = bool(pending)

    def rows() -> Iterator[Row]:
        with handle:
            try:
                for fields in _chain(pending, _csv_rows(reader)):
                    line = reader.line_num
                    where = f"line {line}"
                    if len(fields) != len(header):
                        yield Row(where, f"{path.name}:{line}", problem=f"expected {len(header)} fields, found {len(fields)}")
                    else:
                        yield Row(where, f"{path.name}:{line}", dict(zip(header, fields)))
            except csv.Error as err:
                raise _malformed(path, reader, err) from None

    return Table(str(path), header, rows(), header_line=not headerless, assumed_stars=headerless)


def _chain(first: list, rest: Iterable) -> Iterator:
    yield from first
    yield from rest


def _malformed(path: Path, reader, err: Exception) -> DataError:
    if isinstance(err, DataError):
        return err
    return DataError(f"{path}: line {reader.line_num}: malformed CSV ({err}); check for an unclosed quote")


def _numbered_lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """(line number, line) of the non-blank lines; only \\n ends a line (not \\r alone, U+2028 or kin).

    A line over MAX_LINE_CHARS comes back as None, never read whole: the rest of it is skipped.
    """
    with _open_text(path, newline="\n") as handle:
        number = 0
        while line := handle.readline(MAX_LINE_CHARS + 1):
            number += 1
            if len(line) > MAX_LINE_CHARS:
                while line and not line.endswith("\n"):
                    line = handle.readline(MAX_LINE_CHARS)
                yield number, None
            elif line.strip():
                yield number, line


def _too_long(number: int, path: Path) -> Row:
    return Row(f"line {number}", f"{path.name}:{number}", problem=f"line is over {MAX_LINE_CHARS:,} characters")


def _jsonl_rows(path: Path) -> Iterator[Row]:
    for number, line in _numbered_lines(path):
        where, row_id = f"line {number}", f"{path.name}:{number}"
        if line is None:
            yield _too_long(number, path)
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            yield Row(where, row_id, problem=f"invalid JSON ({err.msg} at column {err.colno})")
            continue
        except ValueError as err:  # an integer of more digits than Python converts
            yield Row(where, row_id, problem=f"invalid JSON ({err})")
            continue
        except RecursionError:
            yield Row(where, row_id, problem="invalid JSON (nested too deeply)")
            continue
        if not isinstance(record, dict):
            yield Row(where, row_id, problem=f"expected a JSON object, found {type(record).__name__}")
            continue
        yield Row(where, row_id, record)


def _line_rows(path: Path) -> Iterator[Row]:
    for number, line in _numbered_lines(path):
        if line is None:
            yield _too_long(number, path)
        else:
            yield Row(f"line {number}", f"{path.name}:{number}", {"text": line.rstrip("\r\n")})


def _parquet_table(path: Path) -> Table:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (PermissionError, IsADirectoryError):
        raise
    except Exception as err:  # pyarrow raises several types for a broken file
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    names = parquet.schema_arrow.names
    wanted = [name for name in names if name in ("text", *LABEL_COLUMNS)]
    positions = [names.index(name) for name in wanted]

    def rows() -> Iterator[Row]:
        index = 0
        metadata = parquet.metadata
        for group in range(metadata.num_row_groups):
            row_group = metadata.row_group(group)
            size = sum(row_group.column(position).total_uncompressed_size for position in positions)
            if size > MAX_ROW_GROUP_BYTES:  # checked before a value of it is built in memory
                raise DataError(
                    f"{path}: row group {group} (rows {index}-{index + row_group.num_rows - 1}) holds {size:,} bytes "
                    f"of text and labels, over the {MAX_ROW_GROUP_BYTES:,}-byte limit; not a review file"
                )
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group], columns=wanted):
                for values in batch.to_pylist():
                    yield Row(f"row {index}", f"{path.name}:{index}", values)
                    index += 1

    return Table(str(path), names, rows())
