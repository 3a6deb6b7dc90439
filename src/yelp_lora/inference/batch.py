"""Batch prediction over files of any size: streamed in chunks, written as it goes, resumable, shardable.

The input is read chunk by chunk (CSV / JSONL / Parquet / plain lines). Each chunk's predictions
are written atomically as one part file under OUT.parts/, so the part files are the progress
record: `--resume` skips the chunks whose part exists. Under torchrun, rank r predicts chunks
r, r+W, r+2W, ...; once every rank is done, rank 0 merges the parts in input order into OUT
(JSONL, CSV or Parquet by suffix, written under a temporary name and renamed) and removes them.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator

from yelp_lora.artifacts import ADAPTER_WEIGHTS, Record, read_record, resolve_adapter_dir, write_record
from yelp_lora.config import LABEL_NAMES, LongText
from yelp_lora.data.rows import InputText, iter_texts, require_input_file
from yelp_lora.errors import DataError, ModelError, SaveError
from yelp_lora.inference.predictor import Predictor, to_predictions
from yelp_lora.modeling.hardware import pick_device, prediction_backend
from yelp_lora.util.atomic import atomic_write_bytes, exclusive, save_errors
from yelp_lora.util.hashing import file_sha256

CHUNK_ROWS = 2048
OUTPUT_FORMATS = (".jsonl", ".csv", ".parquet")
JOB_FILE = "manifest.json"
LOCK_FILE = ".lock"  # in OUT.parts: held by the job writing it
COLUMNS = [
    "row", "source_row", "label", "stars", "confidence", *(f"p_{name}" for name in LABEL_NAMES), "truncated", "error", "windows",
]


def parts_dir(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def _part_path(parts: Path, chunk: int, suffix: str) -> Path:
    return parts / f"chunk-{chunk:08d}{suffix}"


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _chunks(input_path: Path, chunk_rows: int) -> Iterator[list[InputText]]:
    rows = iter_texts(input_path)
    while chunk := list(itertools.islice(rows, chunk_rows)):
        yield chunk


def _distributed() -> tuple[int, int]:
    """(rank, world size); under torchrun, also joins the gloo process group used for barriers."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")  # CPU collectives; only barriers are needed here
    return dist.get_rank(), world


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


class BatchJob(Record):
    """OUT.parts/manifest.json: what a resumed run must share with the interrupted one: the same input
    bytes, the same adapter bytes, the same numerics."""

    input: str
    input_bytes: int
    input_sha256: str
    adapter: str
    adapter_sha256: str | None
    chunk_rows: int
    backend: str
    batch_size: int | None  # as asked; null: the backend's own default
    bf16: bool
    long_text: str = "truncate"
    # The part files' columns: parts written by a version with other columns cannot be merged with these.
    columns: list[str] | None = None
    # What was asked for: a job begun with auto resumes with auto on `backend` (torch after a fallback).
    requested_backend: str | None = None


def _job(
    input_path: Path, adapter_dir: Path, *, chunk_rows: int, backend: str, requested_backend: str, batch_size: int | None,
    bf16: bool, long_text: str,
) -> BatchJob:
    weights = adapter_dir / ADAPTER_WEIGHTS
    return BatchJob(
        input=str(input_path.resolve()), input_bytes=input_path.stat().st_size, input_sha256=file_sha256(input_path),
        adapter=str(adapter_dir.resolve()), adapter_sha256=file_sha256(weights) if weights.is_file() else None,
        chunk_rows=chunk_rows, backend=backend, batch_size=batch_size, bf16=bf16, long_text=long_text, columns=COLUMNS,
        requested_backend=requested_backend,
    )


def _prepare_parts(parts: Path, job: BatchJob, before: BatchJob | None) -> None:
    """Create OUT.parts with its job record, or check that --resume continues the same job: `before`,
    the record --resume found there."""
    if before is None:
        done = len(list(parts.glob("chunk-*")))
        if done and not (parts / JOB_FILE).is_file():
            raise DataError(f"{parts} holds {done} chunk(s) but no {JOB_FILE}, so which job wrote them cannot be "
                            "told: delete that directory to start over")
        if (parts / JOB_FILE).is_file() and done:  # there, but --resume not given (with none done, nothing is lost)
            raise DataError(
                f"{parts} holds {done} finished chunk(s) of an interrupted run: "
                "pass --resume to continue it, or delete that directory to start over"
            )
        write_record(parts / JOB_FILE, job)
    else:
        if before.requested_backend is None:  # recorded before the field existed: the backend it ran on decides
            before = before.model_copy(update={"requested_backend": job.requested_backend})
        changed = [f"{key}: {getattr(before, key)!r} -> {value!r}" for key, value in job if getattr(before, key) != value]
        if changed:
            raise DataError(f"--resume: {parts} belongs to a different job ({'; '.join(changed)})")


@contextlib.contextmanager
def _job_lock(parts: Path, output: Path, rank: int) -> Iterator[None]:
    """Held by rank 0 for the whole job, so that a second job writing OUT is refused instead of
    mixing its chunks with this one's."""
    if rank:
        yield
        return

    def refuse():
        raise DataError(f"{output} is being written by another predict job ({parts} is locked): "
                        "wait for it to finish, or write to another --output")

    created = not parts.exists()
    with exclusive(parts / LOCK_FILE, on_wait=refuse, optional=True):
        try:
            yield
        except BaseException:
            if created and not any(parts.glob("chunk-*")):  # this job's, with no progress to keep: leave no trace
                shutil.rmtree(parts, ignore_errors=True)
            raise


def _records(
    source: Path, chunk: list[InputText], *, first_row: int, predictor: Predictor, skip_bad_rows: bool
) -> list[dict]:
    good, records = [], []
    for offset, row in enumerate(chunk):
        record = dict.fromkeys(COLUMNS)
        record.update(row=first_row + offset, source_row=row.where)
        if row.problem and not skip_bad_rows:
            raise DataError(f"{source}: {row.where}: {row.problem} (--skip-bad-rows writes it with an error instead)")
        record["error"] = row.problem
        records.append(record)
        if not row.problem:
            good.append((record, row.text))
    predictions = to_predictions(predictor.probabilities([text for _, text in good]))
    for (record, _), prediction in zip(good, predictions):
        record.update(
            label=prediction.label, stars=prediction.stars, confidence=prediction.confidence, truncated=prediction.truncated,
            windows=prediction.windows, **{f"p_{name}": p for name, p in prediction.probabilities.items()},
        )
    return records


def _encode(records: list[dict], suffix: str) -> bytes:
    if suffix == ".jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    if suffix == ".csv":
        buffer = io.StringIO(newline="")
        csv.DictWriter(buffer, COLUMNS).writerows(records)
        return buffer.getvalue().encode("utf-8")
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records, schema=_arrow_schema()), sink)
    return sink.getvalue()


def _arrow_schema():
    import pyarrow as pa

    floats = [(name, pa.float64()) for name in COLUMNS if name == "confidence" or name.startswith("p_")]
    return pa.schema(
        [("row", pa.int64()), ("source_row", pa.string()), ("label", pa.string()), ("stars", pa.int64()), *floats,
         ("truncated", pa.bool_()), ("error", pa.string()), ("windows", pa.int64())]
    )


def _merge(parts: Path, chunks: int, output: Path) -> None:
    """Concatenate the parts in chunk order into OUT, under a temporary name then renamed."""
    suffix = output.suffix.lower()
    missing = [i for i in range(chunks) if not _part_path(parts, i, suffix).is_file()]
    if missing:
        raise DataError(f"cannot merge {output}: chunk(s) {missing[:5]} missing in {parts}; run again with --resume")
    staging = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    try:
        with save_errors(output):
            if suffix == ".parquet":
                import pyarrow.parquet as pq

                with pq.ParquetWriter(staging, _arrow_schema()) as writer:
                    for i in range(chunks):
                        writer.write_table(pq.read_table(_part_path(parts, i, suffix)))
            else:
                with open(staging, "wb") as out:
                    if suffix == ".csv":
                        out.write((",".join(COLUMNS) + "\r\n").encode("utf-8"))
                    for i in range(chunks):
                        with open(_part_path(parts, i, suffix), "rb") as part:
                            shutil.copyfileobj(part, out)
            with open(staging, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(staging, output)
    finally:
        staging.unlink(missing_ok=True)
    shutil.rmtree(parts, ignore_errors=True)


def predict_file(
    adapter: str | Path,
    input_path: str | Path,
    output: str | Path,
    *,
    chunk_rows: int = CHUNK_ROWS,
    resume: bool = False,
    skip_bad_rows: bool = False,
    bf16: bool = False,
    batch_size: int | None = None,
    backend: str = "auto",
    long_text: LongText = "truncate",
    progress: bool = True,
) -> dict:
    """Predict every row of INPUT into OUTPUT; returns a summary (rows, chunks, speed, memory)."""
    from tqdm.auto import tqdm

    input_path, output = Path(input_path), Path(output)
    suffix = output.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise DataError(f"--output {output}: unknown format '{suffix}'; use one of {', '.join(OUTPUT_FORMATS)}")
    require_input_file(input_path)
    if chunk_rows < 1:
        raise DataError(f"--chunk-size must be at least 1, not {chunk_rows}")
    rank, world = _distributed()
    requested, backend = backend, prediction_backend(backend, pick_device(), bf16=bf16).value  # recorded for a resume
    parts = parts_dir(output)
    if resume and not parts.exists() and output.exists():  # a finished job removes its parts: redoing it is not resuming
        raise DataError(f"--resume: nothing to resume ({parts} does not exist), and {output} is there already, as a "
                        "finished job leaves it: drop --resume to predict it all again")
    with _job_lock(parts, output, rank):
        recorded = read_record(BatchJob, parts / JOB_FILE) if resume and (parts / JOB_FILE).is_file() else None
        resumed_auto = requested == "auto" and recorded is not None and recorded.requested_backend == "auto"
        if resumed_auto:  # on the backend auto began the job on (after a fallback: torch), never mixing two in one output
            backend = recorded.backend
        if rank == 0:  # before loading the model, so a refused resume is refused at once
            job = _job(input_path, resolve_adapter_dir(adapter), chunk_rows=chunk_rows, backend=backend,
                       requested_backend=requested, batch_size=batch_size, bf16=bf16, long_text=long_text)
            _prepare_parts(parts, job, recorded)
        _barrier(world)
        try:
            predictor = Predictor(adapter, bf16=bf16, batch_size=batch_size, backend=backend if resumed_auto else requested,
                                  long_text=long_text)
        except (ModelError, SaveError) as err:
            if not resumed_auto:
                raise
            raise DataError(f"--resume: this job began on backend {backend} ({parts / JOB_FILE}), which cannot run "
                            f"here now: {err}") from err
        if predictor.backend != backend:  # auto fell back to torch: ONNX Runtime could not be set up here
            if world > 1 or any(parts.glob("chunk-*")):  # answers from two backends must never mix in one output
                raise DataError(f"--backend auto chose {backend} for this job, but {predictor.backend_reason}: "
                                f"pass --backend {backend} once that is fixed, or delete {parts} and pass --backend torch")
            job = job.model_copy(update={"backend": predictor.backend})
            write_record(parts / JOB_FILE, job)
        if rank == 0 and predictor.info.adapter_sha256 != job.adapter_sha256:
            raise DataError(f"the adapter changed while the job started (sha256 {predictor.info.adapter_sha256}, "
                            f"recorded {job.adapter_sha256}): run it again")

        started = time.time()
        done_rows = error_rows = resumed_chunks = predicted_chunks = chunks = 0
        first_error = None
        rss_first = rss_peak = None
        bar = tqdm(desc=f"Predicting (rank {rank}/{world})" if world > 1 else "Predicting", unit="rows",
                   disable=not progress, mininterval=2.0, file=sys.stderr)
        for chunks, chunk in enumerate(_chunks(input_path, chunk_rows), start=1):
            index = chunks - 1
            if index % world != rank:
                continue
            part = _part_path(parts, index, suffix)
            if part.is_file():
                resumed_chunks += 1
                continue
            records = _records(input_path, chunk, first_row=index * chunk_rows, predictor=predictor, skip_bad_rows=skip_bad_rows)
            atomic_write_bytes(part, _encode(records, suffix))
            predicted_chunks += 1
            done_rows += len(chunk)
            errors = [f"{record['source_row']}: {record['error']}" for record in records if record["error"]]
            error_rows += len(errors)
            first_error = first_error or next(iter(errors), None)
            rss = _rss_mib()
            rss_first = rss if rss_first is None else rss_first
            rss_peak = rss if predicted_chunks > 1 and (rss_peak is None or rss > rss_peak) else rss_peak
            bar.update(len(chunk))
            bar.set_postfix(chunk=index, rss_mib=f"{rss:.0f}", refresh=False)
        bar.close()
        elapsed = time.time() - started
        _barrier(world)
        if rank == 0:
            _merge(parts, chunks, output)
        _barrier(world)
    return {
        "output": str(output),
        "rank": rank,
        "world_size": world,
        "backend": predictor.backend,
        "chunks": chunks,
        "chunk_rows": chunk_rows,
        "predicted_rows": done_rows,
        "error_rows": error_rows,  # written with their error and no prediction (--skip-bad-rows)
        "first_error": first_error,
        "predicted_chunks": predicted_chunks,
        "resumed_chunks": resumed_chunks,
        "seconds": elapsed,
        "rows_per_second": done_rows / elapsed if elapsed else None,
        "rss_mib_after_first_chunk": rss_first,
        "rss_mib_peak_later_chunks": rss_peak,
    }


def format_batch_summary(summary: dict) -> str:
    memory = ""
    if summary["rss_mib_after_first_chunk"] is not None:
        memory = f"; RSS {summary['rss_mib_after_first_chunk']:.0f} MiB after the first chunk"
        if summary["rss_mib_peak_later_chunks"] is not None:
            memory += f", {summary['rss_mib_peak_later_chunks']:.0f} MiB peak after it"
    rate = f", {summary['rows_per_second']:.0f} rows/s" if summary["rows_per_second"] else ""
    who = f"rank {summary['rank']}/{summary['world_size']}: " if summary["world_size"] > 1 else ""
    rows = f"predicted {summary['predicted_rows'] - summary['error_rows']:,} rows"
    if summary["error_rows"]:
        rows += f" and wrote {summary['error_rows']:,} bad ones with their error (first: {summary['first_error']})"
    return (
        f"{who}{rows} in {summary['predicted_chunks']} chunk(s) "
        f"({summary['resumed_chunks']} already done) in {summary['seconds']:.1f}s{rate} on {summary['backend']}{memory}"
    )
