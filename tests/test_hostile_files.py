"""Readers that cannot be crashed: hypothesis writes files mixing valid rows with hostile ones, and
every load ends in the valid rows, unaltered and in order, or in one DataError naming file and row."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yelp_lora.data.readers import MAX_LINE_CHARS
from yelp_lora.data.rows import iter_texts, text_problem
from yelp_lora.data.sources import load_split
from yelp_lora.errors import DataError

EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Real-looking texts: any characters, U+2028 / U+0085 and friends included, that the row check accepts.
texts = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=60).filter(lambda t: text_problem(t) is None)
valid_rows = st.lists(st.tuples(st.integers(0, 4), texts), max_size=6, unique_by=lambda row: (row[1], row[0]))
bad_labels = st.one_of(
    st.sampled_from(["²", "١", "+-3", "3.5", "positive", "", " ", "0x2", "1" * 5000, "٣"]),
    st.integers().filter(lambda n: not 0 <= n <= 4), st.floats().filter(lambda f: not (f.is_integer() and 0 <= f <= 4)),
    st.booleans(), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
bad_texts = st.one_of(
    st.sampled_from(["", "   ", "nul\x00byte", "x" * 100_001]), st.integers(), st.none(), st.lists(texts, max_size=2),
)
hostile_json_lines = st.one_of(
    st.builds(lambda label, text: json.dumps({"label": label, "text": text}), bad_labels, texts),
    st.builds(lambda text: json.dumps({"label": 1, "text": text}), bad_texts),
    st.sampled_from([
        "[" * 100_000,  # deep nesting
        '{"label": 1, "text": "a"' + "}" * 3,  # broken
        '{"label": ' + "1" * 5000 + ', "text": "huge integer"}',
        '{"label": 1, "text": "lone \\ud800 surrogate"}',
        "42", '"a string"', "[1, 2]", "null", "{not json", '{"text": "no label"}', '{"label": 2}',
    ]),
)


def check_load(path: Path, valid: list[tuple[int, str]], bad_lines: list[int]) -> None:
    """skip_bad_rows keeps exactly the valid rows; without it, a DataError names the file and the first bad line."""
    try:
        kept = load_split(str(path), "train", skip_bad_rows=True)
    except DataError as err:
        assert not valid and "no usable rows" in str(err)
    else:
        assert list(zip(kept.labels, kept.texts)) == valid
        assert len(kept.skipped) == len(bad_lines)
        assert all(str(path) in problem for problem in kept.skipped)
    if bad_lines:
        with pytest.raises(DataError) as err:
            load_split(str(path), "train")
        assert str(path) in str(err.value) and f"line {bad_lines[0]}:" in str(err.value)
    elif valid:
        assert list(zip(*[load_split(str(path), "train").labels, load_split(str(path), "train").texts])) == valid


@EXAMPLES
@given(valid=valid_rows, hostile=st.lists(hostile_json_lines, max_size=4), data=st.data())
def test_jsonl_rows(valid, hostile, data):
    lines = [json.dumps({"label": label, "text": text}, ensure_ascii=False) for label, text in valid]
    positions = sorted(data.draw(st.lists(st.integers(0, len(lines)), min_size=len(hostile), max_size=len(hostile))))
    for offset, (position, line) in enumerate(zip(positions, hostile)):
        lines.insert(position + offset, line)
    bad_lines = [number for number, line in enumerate(lines, start=1) if line in hostile]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rows.jsonl"
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        check_load(path, valid, bad_lines)
        # Prediction input reads the same file through the same reader: one answer per line, in order.
        assert [row.where for row in iter_texts(path)] == [f"line {n}" for n in range(1, len(lines) + 1)]


csv_cells = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=20)
hostile_csv_rows = st.one_of(
    st.tuples(st.sampled_from(["²", "+-3", "9", "-1", "2.5", "x", "", "1" * 5000]), texts).map(list),
    st.tuples(st.sampled_from(["0", "4"]), st.sampled_from(["", "  ", "nul\x00byte"])).map(list),
    st.lists(csv_cells, min_size=3, max_size=4),  # a wrong number of fields
    st.lists(csv_cells, min_size=1, max_size=1).filter(lambda row: row != [""]),
)


@EXAMPLES
@given(valid=valid_rows, hostile=st.lists(hostile_csv_rows, max_size=4), data=st.data())
def test_csv_rows(valid, hostile, data):
    rows = [[str(label), text] for label, text in valid]
    positions = sorted(data.draw(st.lists(st.integers(0, len(rows)), min_size=len(hostile), max_size=len(hostile))))
    for offset, (position, row) in enumerate(zip(positions, hostile)):
        rows.insert(position + offset, row)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["label", "text"])
    writer.writerows(rows)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rows.csv"
        path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
        with open(path, newline="", encoding="utf-8") as handle:  # where each row ends, as csv counts lines
            reader = csv.reader(handle)
            line_of = [reader.line_num for _ in reader][1:]
        bad_lines = [line for line, row in zip(line_of, rows) if any(row is h for h in hostile)]
        check_load(path, valid, bad_lines)


def test_a_line_too_long_to_read_is_refused_or_skipped_without_reading_it(tmp_path):
    jsonl = tmp_path / "long.jsonl"
    with open(jsonl, "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"label": 1, "text": "fine"}) + "\n")
        handle.write('{"label": 2, "text": "' + "a" * (MAX_LINE_CHARS + 10) + '"}\n')
        handle.write(json.dumps({"label": 3, "text": "also fine"}) + "\n")
    kept = load_split(str(jsonl), "train", skip_bad_rows=True)
    assert kept.texts == ["fine", "also fine"] and f"line 2: line is over {MAX_LINE_CHARS:,} characters" in kept.skipped[0]
    unclosed = tmp_path / "unclosed.csv"
    with open(unclosed, "w", encoding="utf-8") as handle:
        handle.write('label,text\n1,"never closed\n' + ("x" * 1000 + "\n") * (MAX_LINE_CHARS // 1000 + 10))
    with pytest.raises(DataError, match="malformed CSV"):
        load_split(str(unclosed), "train", skip_bad_rows=True)
    assert csv.field_size_limit() == 131072, "the process-wide CSV field limit is left as it was"


def test_a_huge_parquet_row_group_is_refused_before_it_is_read(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from yelp_lora.data import readers

    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"label": [1, 2], "text": ["a" * 5000, "b" * 5000]}), path)
    monkeypatch.setattr(readers, "MAX_ROW_GROUP_BYTES", 4096)
    with pytest.raises(DataError, match="row group 0 .* over the 4,096-byte limit"):
        load_split(str(path), "train")




@EXAMPLES
@given(content=st.one_of(st.binary(max_size=3000), st.text(max_size=3000).map(lambda t: t.encode("utf-8", "surrogatepass"))),
       suffix=st.sampled_from([".csv", ".jsonl", ".parquet", ".txt"]))
def test_any_bytes_end_in_rows_or_one_error_naming_the_file(content, suffix):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{suffix}"
        path.write_bytes(content)
        for read in (lambda: load_split(str(path), "train", skip_bad_rows=True), lambda: list(iter_texts(path))):
            try:
                read()
            except DataError as err:
                assert str(path) in str(err), str(err)
