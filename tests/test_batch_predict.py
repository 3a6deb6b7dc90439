"""Issue 6.5: `predict --input BIG --output OUT` streams 100,000 rows in flat memory, resumes after
SIGKILL, and shards across torchrun processes with output identical to one process.

Uses a tiny random BERT with a LoRA adapter trained for one step through the real train path,
so the streaming machinery runs for real at a speed 2 shared cores can afford.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from support import PYTHON, REPO, cli, cli_env, run_cli, shared_rows, TINY_ENV

pytestmark = pytest.mark.slow
BIG_ROWS = 100_000
TEXT_CHARS = 160  # review openings: real text, short enough for 2 cores


@pytest.fixture(scope="module")
def adapter(tiny_run) -> Path:
    return tiny_run


def texts(n: int) -> list[str]:
    rows = shared_rows()
    return [rows[i % len(rows)][1][:TEXT_CHARS] for i in range(n)]


def write_csv(path: Path, n: int) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows((i, text) for i, text in enumerate(texts(n)))
    return path


def predict_args(adapter: Path, source: Path, output: Path, *extra: str) -> list[str]:
    return ["predict", "--adapter", str(adapter), "--input", str(source), "--output", str(output), *extra]


def test_100k_rows_flat_memory_and_resume_after_sigkill(adapter, tmp_path):
    big = write_csv(tmp_path / "big.csv", BIG_ROWS)
    small = write_csv(tmp_path / "small.csv", 4096)
    output = tmp_path / "predictions.parquet"

    small_run = run_cli(*predict_args(adapter, small, tmp_path / "small.parquet", "--json-summary", str(tmp_path / "small.json")), check=False, env=TINY_ENV)
    assert small_run.returncode == 0, small_run.stderr[-3000:]
    small_rss = json.loads((tmp_path / "small.json").read_text())["rss_mib_peak_later_chunks"]

    process = subprocess.Popen([PYTHON, "-m", "yelp_lora", *predict_args(adapter, big, output)], env=cli_env(**TINY_ENV), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "predictions.parquet.parts"
    deadline = time.time() + 300
    while len(list(parts.glob("chunk-*.parquet"))) < 2:
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not output.exists()

    again = run_cli(*predict_args(adapter, big, output), check=False, env=TINY_ENV)
    assert again.returncode == 2 and "pass --resume to continue it" in again.stderr, again.stderr[-3000:]

    summary_file = tmp_path / "summary.json"
    resumed = run_cli(*predict_args(adapter, big, output, "--resume", "--json-summary", str(summary_file)), timeout=900, check=False, env=TINY_ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    summary = json.loads(summary_file.read_text())
    print("\n100k batch prediction:", json.dumps(summary))
    assert summary["resumed_chunks"] >= 2
    assert summary["predicted_rows"] + summary["resumed_chunks"] * 2048 == BIG_ROWS
    assert summary["chunks"] == -(-BIG_ROWS // 2048)

    table = pq.read_table(output, columns=["row", "source_row", "label", "error"])
    assert table.num_rows == BIG_ROWS
    assert table.column("row").to_pylist() == list(range(BIG_ROWS))
    assert table.column("source_row")[-1].as_py() == f"line {BIG_ROWS + 1}"
    assert table.column("error").null_count == BIG_ROWS and table.column("label").null_count == 0
    assert not parts.exists()
    # Flat memory: 45+ chunks after the first add (almost) nothing, and reading 25x more input
    # (the 100k file is ~30 MB of text) costs no more than a 4,096-row file.
    assert summary["rss_mib_peak_later_chunks"] - summary["rss_mib_after_first_chunk"] < 48
    assert summary["rss_mib_peak_later_chunks"] - small_rss < 48
    # --resume once the job is done: nothing to resume, and the finished output is left as it is.
    finished = output.stat().st_mtime_ns
    done = cli(*predict_args(adapter, big, output, "--resume"), check=False)
    assert done.returncode == 2 and f"--resume: nothing to resume ({parts} does not exist)" in done.stderr, done.stderr
    assert output.stat().st_mtime_ns == finished


def test_torchrun_shards_give_the_same_output_as_one_process(adapter, tmp_path):
    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts(5000)), encoding="utf-8")
    single = run_cli(*predict_args(adapter, source, tmp_path / "single.csv", "--chunk-size", "1024"), check=False, env=TINY_ENV)
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "yelp_lora", *predict_args(adapter, source, tmp_path / "sharded.csv", "--chunk-size", "1024",
                                                 "--json-summary", str(tmp_path / "summary.json"))]
    sharded = subprocess.run(torchrun, capture_output=True, text=True, env=cli_env(**TINY_ENV), cwd=REPO, timeout=300)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert "rank 0/2: predicted 2,952 rows in 3 chunk(s)" in sharded.stderr
    assert "rank 1/2: predicted 2,048 rows in 2 chunk(s)" in sharded.stderr
    # Each rank's figures in a file of its own.
    assert [json.loads((tmp_path / f"summary.rank{rank}.json").read_text())["predicted_rows"] for rank in (0, 1)] == [2952, 2048]
    assert (tmp_path / "sharded.csv").read_bytes() == (tmp_path / "single.csv").read_bytes()
    with open(tmp_path / "sharded.csv", newline="", encoding="utf-8") as handle:
        assert sum(1 for _ in csv.DictReader(handle)) == 5000


def test_bad_rows_stop_with_their_row_or_are_written_with_an_error(adapter, tmp_path):
    source = tmp_path / "reviews.parquet"
    column = texts(10)
    column[3], column[7] = "   ", "nul\x00byte"
    pq.write_table(pa.table({"text": column}), source)
    stopped = cli(*predict_args(adapter, source, tmp_path / "out.jsonl"), check=False)
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr
    assert f"yelp-lora predict: error: {source}: row 3: whitespace-only text (--skip-bad-rows" in stopped.stderr
    assert not (tmp_path / "out.jsonl.parts").exists(), "a job stopped before any chunk leaves nothing behind"

    # As the line says: the same command with --skip-bad-rows (no chunk was finished, so no --resume is needed).
    skipped = cli(*predict_args(adapter, source, tmp_path / "out.jsonl", "--skip-bad-rows"), check=False)
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["error"] for r in records if r["error"]] == ["whitespace-only text", "text contains NUL bytes"]
    assert "predicted 8 rows and wrote 2 bad ones with their error (first: row 3: whitespace-only text)" in skipped.stderr
    assert records[3]["label"] is None and records[3]["source_row"] == "row 3"
    assert all(r["label"] for i, r in enumerate(records) if i not in (3, 7))


def test_an_unparsable_jsonl_line_is_a_row_error_and_a_changed_input_is_not_resumed(adapter, tmp_path):
    source = tmp_path / "reviews.jsonl"
    lines = [json.dumps({"text": text}) for text in texts(6)]
    lines[2] = '{"text": "never closed'
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    output = tmp_path / "out.jsonl"
    chunks = ("--chunk-size", "2")  # lines 1-2 finish a chunk before line 3 stops the job
    stopped = cli(*predict_args(adapter, source, output, *chunks), check=False)
    assert stopped.returncode == 2 and f"{source}: line 3: invalid JSON" in stopped.stderr
    # The same size and modification time, other bytes: the job record's input hash tells them apart.
    stat = source.stat()
    source.write_text(source.read_text(encoding="utf-8").replace("a", "e"), encoding="utf-8")
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed = cli(*predict_args(adapter, source, output, "--resume", *chunks), check=False)
    assert changed.returncode == 2 and "belongs to a different job (input_sha256:" in changed.stderr
    shutil.rmtree(output.with_name(output.name + ".parts"))
    skipped = cli(*predict_args(adapter, source, output, "--skip-bad-rows"), check=False)
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(records) == 6 and records[2]["error"].startswith("invalid JSON") and records[2]["label"] is None
    assert all(record["label"] for i, record in enumerate(records) if i != 2)


def test_a_second_job_on_the_same_output_is_refused_while_the_first_writes_it(adapter, tmp_path):
    from yelp_lora.util.atomic import exclusive

    source, output = write_csv(tmp_path / "in.csv", 4), tmp_path / "out.jsonl"
    parts = output.with_name(output.name + ".parts")
    with exclusive(parts / ".lock"):  # as a running job holds it
        for extra in ((), ("--resume",)):
            busy = cli(*predict_args(adapter, source, output, *extra), check=False)
            assert busy.returncode == 2 and busy.stderr == (
                f"yelp-lora predict: error: {output} is being written by another predict job ({parts} is locked): "
                "wait for it to finish, or write to another --output\n")
        assert [path.name for path in parts.iterdir()] == [".lock"], "nothing of the running job's is touched"
    # Chunks without the record of the job that wrote them are never merged into an output.
    (parts / "chunk-00000000.jsonl").write_text("{}\n")
    foreign = cli(*predict_args(adapter, source, output, "--resume"), check=False)
    assert foreign.returncode == 2 and f"{parts} holds 1 chunk(s) but no manifest.json" in foreign.stderr
    shutil.rmtree(parts)
    cli(*predict_args(adapter, source, output))
    assert len(output.read_text().splitlines()) == 4 and not parts.exists()
