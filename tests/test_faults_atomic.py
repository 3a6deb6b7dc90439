"""Issue 6.2: a save that fails half-way (here: a file-size limit, as a full disk would) leaves the
previous good version in place, nothing half-written beside it, and one clear error line.

Root ignores file permissions, so a read-only directory cannot fail a save here; RLIMIT_FSIZE
fails writes with EFBIG (SIGXFSZ ignored) for root too.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
from pathlib import Path

import pytest

from support import PYTHON, REPO, cli_env, run_cli, tiny_train_args, TINY_ENV

LIMIT_BYTES = 100_000  # the adapter directory's tokenizer.json alone is ~700 kB


def limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT_BYTES, LIMIT_BYTES))


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_atomic_write_text_keeps_the_old_file_when_the_disk_refuses(tmp_path):
    target = tmp_path / "report.json"
    target.write_text('{"previous": "good"}\n')
    code = f"from yelp_lora.util.atomic import atomic_write_text; atomic_write_text({str(target)!r}, 'x' * {4 * LIMIT_BYTES})"
    result = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=cli_env(**TINY_ENV), cwd=REPO,
                            preexec_fn=limit_file_size, timeout=60)
    assert result.returncode != 0
    assert f"SaveError: cannot write {target}: File too large; any previous copy is unchanged" in result.stderr
    assert target.read_text() == '{"previous": "good"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"], "no temporary file is left behind"


@pytest.mark.slow
def test_failed_adapter_save_keeps_previous_run_and_says_so(tiny_bert_dir, data_dir, tmp_path):
    run = tmp_path / "run"
    args = tiny_train_args(tiny_bert_dir, data_dir, run, "--max-steps", "2")
    first = run_cli(*args, check=False, env=TINY_ENV)
    assert first.returncode == 0, first.stderr
    before = snapshot(run)

    # A finished run is replaced only when asked; its adapter and run.json go only as the new ones are written.
    second = run_cli(*args, "--seed", "3", "--overwrite", preexec_fn=limit_file_size, check=False, env=TINY_ENV)
    assert second.returncode == 2, second.stderr[-3000:]
    assert "Traceback" not in second.stderr
    error_lines = [line for line in second.stderr.splitlines() if "error:" in line]
    assert error_lines == [
        f"yelp-lora train: error: cannot write {run / 'adapter'}: File too large; any previous copy is unchanged"
    ]
    after = snapshot(run)
    assert after == before, "the first run's adapter and run.json are untouched"
    assert json.loads(after["run.json"])["config"]["train"]["seed"] == 42
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")], "no half-written staging directory"


def test_a_process_that_finds_an_export_under_way_waits_for_it_instead_of_repeating_it(tiny_run, tmp_path, monkeypatch, caplog):
    """torchrun ranks or a second server on a cold cache: one export, not one each."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from yelp_lora.artifacts import adapter_base
    from yelp_lora.inference import onnx_backend
    from yelp_lora.util.atomic import exclusive

    monkeypatch.setenv("YELP_LORA_CACHE", str(tmp_path))
    adapter = tiny_run / "adapter"
    target = onnx_backend.export_dir(adapter, adapter_base(adapter))
    exports, export = [], onnx_backend.export
    monkeypatch.setattr(onnx_backend, "export", lambda *args, **options: exports.append(args) or export(*args, **options))
    with ThreadPoolExecutor(1) as other:
        with exclusive(target.with_name(f"{target.name}.lock")):  # this process is mid-export
            waiting = other.submit(onnx_backend.exported_model, adapter, "onnx")
            time.sleep(2)
            assert not waiting.done()
            export(adapter, target)
        assert waiting.result(timeout=300) == target / onnx_backend.FP32_FILE
    assert exports == []  # it found this process's files intact once the lock was free
    assert f"another process is exporting {target}: waiting for it" in caplog.text


def test_an_export_clears_what_a_killed_export_left_and_spares_one_under_way(tiny_run, tmp_path, monkeypatch):
    import os
    import time

    from yelp_lora.artifacts import adapter_base
    from yelp_lora.inference import onnx_backend

    monkeypatch.setenv("YELP_LORA_CACHE", str(tmp_path))
    adapter = tiny_run / "adapter"
    target = onnx_backend.export_dir(adapter, adapter_base(adapter))
    killed, under_way = (target.parent / f".{target.name}.tmp-{name}" for name in ("killed", "young"))
    for staging in (killed, under_way):
        (staging / "partial").mkdir(parents=True)
    hours_ago = time.time() - 2 * onnx_backend.STALE_EXPORT_S
    os.utime(killed, (hours_ago, hours_ago))
    onnx_backend.exported_model(adapter, "onnx")
    assert not killed.exists() and under_way.exists()


def test_where_the_file_system_keeps_no_locks_an_export_goes_on_and_a_registry_write_stops(tmp_path, monkeypatch):
    """NFS without a lock daemon answers flock with ENOLCK: the ONNX export publishes atomically
    anyway, but two registry adds could pick one version number, so that lock is required."""
    import errno

    from yelp_lora.errors import SaveError
    from yelp_lora.util import atomic

    def no_locks(descriptor, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(atomic.fcntl, "flock", no_locks)
    with atomic.exclusive(tmp_path / "export.lock", optional=True):
        pass
    with pytest.raises(SaveError, match=f"^cannot lock {tmp_path / 'registry.lock'}: No locks available$"):
        with atomic.exclusive(tmp_path / "registry.lock"):
            pass
