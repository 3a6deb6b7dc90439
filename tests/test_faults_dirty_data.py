"""Issue 6.3: broken training inputs end in one clear error naming file, row and problem, or a counted skip.

The broken corpus is synthesised here (no review text is committed): good rows come from
../shared at test time, and each broken row is built from a short made-up string.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from support import cli, run_cli, shared_rows, tiny_train_args, TINY_ENV

pytestmark = pytest.mark.slow
MADE_UP = "The soup was warm and the waiter was kind."
HUGE = "word " * 200_000  # a 1 MB "review"

# (bytes of one CSV data row, the problem the error must name for it)
CSV_BAD_ROWS = [
    (b'2,"caf\xe9 in latin-1"', "text has bytes that are not valid UTF-8"),
    (b'1,"nul\x00byte"', "text contains NUL bytes"),
    (b'4,"extra",column', "expected 2 fields, found 3"),
    (b"0", "expected 2 fields, found 1"),
    (b'positive,"label as text"', "label 'positive' is not an integer 0-4"),
    (b'7,"out of range"', "label 7 is out of range 0-4"),
    (b'2,""', "empty text"),
    (b'2,"   "', "whitespace-only text"),
    (b'3,"' + HUGE.encode() + b'"', "text is 1,000,000 characters long"),
]
JSONL_BAD_ROWS = [
    (b'{"label": 2, "text": "caf\xe9 in latin-1"}', "text has bytes that are not valid UTF-8"),
    (b'{"label": 1, "text": "nul\\u0000byte"}', "text contains NUL bytes"),
    (b'{"label": 1}', "missing column 'text'"),
    (b'{"text": "no label at all"}', "missing column 'label'"),
    (b'{"label": "positive", "text": "label as text"}', "label 'positive' is not an integer 0-4"),
    (b'{"label": 9, "text": "out of range"}', "label 9 is out of range 0-4"),
    (b'{"label": 2, "text": ""}', "empty text"),
    (b'{"label": 2, "text": " \\t "}', "whitespace-only text"),
    (json.dumps({"label": 3, "text": HUGE}).encode(), "text is 1,000,000 characters long"),
    (b'{"label": 3, "text": "unclosed', "invalid JSON"),
]
# Parquet columns are typed: labels-as-text means a string label column.
PARQUET_BAD_ROWS = [
    ("2", "nul\x00byte", "text contains NUL bytes"),
    ("positive", MADE_UP + " (a)", "label 'positive' is not an integer 0-4"),
    ("11", MADE_UP + " (b)", "label 11 is out of range 0-4"),
    ("2", "", "empty text"),
    ("2", "   ", "whitespace-only text"),
    ("3", HUGE, "text is 1,000,000 characters long"),
]
GOOD_ROWS = 60
# One case runs as a user runs it, in its own process; the rest run the same entry point in this
# process, which skips an interpreter start and torch's import for each.


@pytest.fixture(scope="module")
def good() -> list[tuple[int, str]]:
    return shared_rows(GOOD_ROWS)


def _csv_quote(text: str) -> bytes:
    return b'"' + text.replace('"', '""').encode() + b'"'


def write_dirty_csv(path: Path, good) -> Path:
    lines = [b"label,text"] + [str(label).encode() + b"," + _csv_quote(text) for label, text in good]
    lines += [row for row, _ in CSV_BAD_ROWS]
    lines += lines[1:4]  # three duplicated rows
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def write_dirty_jsonl(path: Path, good) -> Path:
    lines = [json.dumps({"label": label, "text": text, "extra": "ignored"}).encode() for label, text in good]
    path.write_bytes(b"\n".join(lines + [row for row, _ in JSONL_BAD_ROWS]) + b"\n")
    return path


def write_dirty_parquet(path: Path, good) -> Path:
    labels = [str(label) for label, _ in good] + [label for label, _, _ in PARQUET_BAD_ROWS]
    texts = [text for _, text in good] + [text for _, text, _ in PARQUET_BAD_ROWS]
    pq.write_table(pa.table({"label": labels + labels[:2], "text": texts + texts[:2]}), path)
    return path


def first_data_line(kind: str) -> int:
    return {"csv": 2, "jsonl": 1, "parquet": 0}[kind]  # CSV: header is line 1; Parquet rows count from 0


CASES = {
    "csv": (write_dirty_csv, [p for _, p in CSV_BAD_ROWS], "line"),
    "jsonl": (write_dirty_jsonl, [p for _, p in JSONL_BAD_ROWS], "line"),
    "parquet": (write_dirty_parquet, [p for _, _, p in PARQUET_BAD_ROWS], "row"),
}


def assert_clear_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "yelp-lora train: error:" in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr[-3000:])


@pytest.mark.parametrize("kind", sorted(CASES))
def test_every_broken_row_is_named_with_file_and_row(kind, good, tiny_bert_dir, tmp_path):
    write, problems, unit = CASES[kind]
    data = write(tmp_path / f"train.{kind}", good)
    args = tiny_train_args(tiny_bert_dir, data, tmp_path / "run", "--max-steps", "1")
    result = run_cli(*args, check=False, env=TINY_ENV) if kind == "csv" else cli(*args, check=False)
    assert_clear_error(result, f"{len(problems)} bad row(s) in {data}", "--skip-bad-rows")
    first_bad = first_data_line(kind) + GOOD_ROWS
    for offset, problem in enumerate(problems):
        assert f"{data}: {unit} {first_bad + offset}: {problem}" in result.stderr
    assert not (tmp_path / "run").exists(), "nothing is written when the data is refused"


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_skip_bad_rows_trains_and_counts_them(kind, good, tiny_bert_dir, tmp_path):
    write, problems, _ = CASES[kind]
    data = write(tmp_path / f"train.{kind}", good)
    run = tmp_path / "run"
    args = tiny_train_args(tiny_bert_dir, data, run, "--max-steps", "1", "--skip-bad-rows")
    args[args.index("--train-samples") + 1] = "16"
    args[args.index("--val-samples") + 1] = "8"
    result = cli(*args, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((run / "run.json").read_text())
    assert record["data"]["skipped_bad_rows"] == len(problems)
    assert record["data"]["duplicates_dropped"] == {"csv": 3, "parquet": 2}[kind]
    assert record["data"]["train_file_rows"] == GOOD_ROWS
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_headerless_stars_out_of_range(good, tiny_bert_dir, tmp_path):
    data = tmp_path / "stars.csv"
    rows = [f'"{label + 1}",' for label, _ in good[:20]]
    body = [row.encode() + _csv_quote(text) for row, (_, text) in zip(rows, good[:20])]
    data.write_bytes(b"\n".join(body + [b'"5","five stars"', b'"0","zero stars"', b'"6","six stars"']) + b"\n")
    result = cli(*tiny_train_args(tiny_bert_dir, data, tmp_path / "run"), check=False)
    assert_clear_error(result, f"{data}: line 22: stars 0 is out of range 1-5", f"{data}: line 23: stars 6 is out of range 1-5")
    # Labels 0-4 without a header would be read one class off: 0s and no 5 stop the whole file, even
    # with --skip-bad-rows, which would otherwise train on the shifted labels.
    labels = tmp_path / "labels.csv"
    labels.write_bytes(b"\n".join(f'"{label}",'.encode() + _csv_quote(text) for label, text in good[:20]) + b"\n")
    zeros = sum(label == 0 for label, _ in good[:20])
    result = cli(*tiny_train_args(tiny_bert_dir, labels, tmp_path / "run", "--skip-bad-rows"), check=False)
    assert_clear_error(result, f"{labels}: {zeros} row(s) rated 0 and none 5, in a file without a header line",
                       "for labels 0-4, add the header line label,text")


def test_csv_with_a_broken_quote(good, tiny_bert_dir, tmp_path):
    data = tmp_path / "broken.csv"
    data.write_bytes(b'label,text\n1,"fine"\n2,"this quote never closes\n3,"next"\n')
    result = cli(*tiny_train_args(tiny_bert_dir, data, tmp_path / "run"), check=False)
    assert_clear_error(result, f"{data}: line 4: malformed CSV", "unclosed quote")


def test_parquet_without_a_label_column(tiny_bert_dir, tmp_path):
    data = tmp_path / "nolabel.parquet"
    pq.write_table(pa.table({"text": [MADE_UP], "score": [3]}), data)
    result = cli(*tiny_train_args(tiny_bert_dir, data, tmp_path / "run"), check=False)
    assert_clear_error(result, "needs columns 'text' and 'label' (0-4) or 'stars' (1-5); has ['text', 'score']")


def test_missing_path_and_unknown_hub_id_are_named(tiny_bert_dir, tmp_path):
    missing = tmp_path / "no-such" / "train.csv"
    result = cli(*tiny_train_args(tiny_bert_dir, missing, tmp_path / "run"), check=False)
    assert_clear_error(result, f"data path not found: {missing}")
    result = cli(*tiny_train_args(tiny_bert_dir, "someone/no-such-yelp-set", tmp_path / "run"), check=False)
    assert_clear_error(result, "data source 'someone/no-such-yelp-set' is not a local file or directory", "hub")


def test_damaged_weights_files_are_named_not_a_traceback(good, tiny_bert_dir, tiny_run, tmp_path):
    import shutil

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"label": label, "text": text}) + "\n" for label, text in good), encoding="utf-8")
    # A base model whose weights were cut short (an interrupted copy or download).
    damaged = tmp_path / "damaged-base"
    shutil.copytree(tiny_bert_dir, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    result = cli(*tiny_train_args(damaged, data, tmp_path / "run"), check=False)
    assert_clear_error(result, f"cannot load base model '{damaged}'", "damaged or cut short")
    # The same for an adapter's weights.
    run = tmp_path / "good-run"
    shutil.copytree(tiny_run, run)
    weights = run / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    result = cli("predict", "--adapter", str(run / "adapter"), MADE_UP, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "yelp-lora predict: error: cannot load adapter" in result.stderr and "damaged or cut short" in result.stderr
    # Through its run directory, the weights are first checked against the sha256 run.json records.
    result = cli("predict", "--adapter", str(run), MADE_UP, check=False)
    assert result.returncode == 2 and result.stderr.startswith(
        f"yelp-lora predict: error: {run / 'run.json'} records other adapter weights"), result.stderr[-3000:]
    assert "or a damaged copy" in result.stderr
