"""Issue 6.1: a training process killed with SIGKILL mid-epoch resumes to the same adapter bytes."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from support import PYTHON, REPO, cli_env, run_cli, tiny_train_args, TINY_ENV

pytestmark = pytest.mark.slow
# 64 rows / batch 8 = 8 steps per epoch: checkpoint-3 is mid-epoch 1, long before epoch 1's adapter.
SCHEDULE = ("--epochs", "2", "--save-steps", "3", "--lr", "5e-3")


def test_sigkill_mid_epoch_then_resume_gives_identical_adapter(tiny_bert_dir, data_dir, tmp_path):
    data = data_dir
    straight = run_cli(*tiny_train_args(tiny_bert_dir, data, tmp_path / "straight", *SCHEDULE), check=False, env=TINY_ENV)
    assert straight.returncode == 0, straight.stderr

    crashed = tmp_path / "crashed"
    args = tiny_train_args(tiny_bert_dir, data, crashed, *SCHEDULE)
    process = subprocess.Popen([PYTHON, "-m", "yelp_lora", *args], env=cli_env(**TINY_ENV), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = crashed / "checkpoints"
    deadline = time.time() + 240
    while not list(checkpoints.glob("checkpoint-*")):
        assert process.poll() is None, "training ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert [p.name for p in checkpoints.glob("checkpoint-*")] == ["checkpoint-3"]
    assert not (crashed / "adapter").exists() and not (crashed / "run.json").exists()
    # What a kill during a later save leaves behind: a hidden, partial staging directory.
    partial = checkpoints / ".staging-checkpoint-6" / "checkpoint-6"
    partial.mkdir(parents=True)
    (partial / "adapter_model.safetensors").write_bytes(b"\x00" * 10)

    changed = run_cli(*args, "--resume", "--seed", "7", check=False, env=TINY_ENV)
    assert changed.returncode == 2 and "train.seed: 42 -> 7" in changed.stderr, changed.stderr

    resumed = run_cli(*args, "--resume", check=False, env=TINY_ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    adapter = "adapter/adapter_model.safetensors"
    assert (crashed / adapter).read_bytes() == (tmp_path / "straight" / adapter).read_bytes()
    before, after = (json.loads((d / "run.json").read_text()) for d in (tmp_path / "straight", crashed))
    assert after["validation"] == before["validation"]
    assert after["best_epoch"] == before["best_epoch"] and after["global_step"] == before["global_step"] == 16
    # Logged training loss is a running mean since the last log, restarted on resume; the
    # gradients themselves must match step for step.
    assert [h["grad_norm"] for h in after["history"]] == [h["grad_norm"] for h in before["history"]]
    assert not checkpoints.exists(), "checkpoints are removed once the run is complete"


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    result = run_cli("train", "--resume", "--output-dir", str(tmp_path / "nothing"), timeout=120, check=False, env=TINY_ENV)
    assert result.returncode == 2
    assert "--resume: no checkpoint to resume from" in result.stderr and "Traceback" not in result.stderr
