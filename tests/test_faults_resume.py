"""Issue 6.1: a training process killed with SIGKILL resumes to the same adapter bytes: killed as an
epoch's checkpoint appears, and again mid-way through a later epoch."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support import PYTHON, REPO, cli, cli_env, run_cli, tiny_train_args, TINY_ENV

pytestmark = pytest.mark.slow
# 64 rows / batch 8 = 8 steps per epoch, 24 in all: checkpoint-8 ends epoch 1 (the step save and the
# epoch's coincide), checkpoint-12 is mid-epoch 2, whose order is drawn anew.
SCHEDULE = ("--epochs", "3", "--save-steps", "4", "--lr", "5e-3")


def kill_at_next_checkpoint(args: list[str], checkpoints: Path) -> str:
    """Run `train ARGS` and SIGKILL it as soon as a checkpoint it wrote appears; returns that checkpoint's name."""
    before = {p.name for p in checkpoints.glob("checkpoint-*")}
    process = subprocess.Popen([PYTHON, "-m", "yelp_lora", *args], env=cli_env(**TINY_ENV), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (written := {p.name for p in checkpoints.glob("checkpoint-*")} - before):
        assert process.poll() is None, "training ended before its next checkpoint"
        assert time.time() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(written) == 1, written
    return written.pop()


def test_sigkill_then_resume_gives_identical_adapter(tiny_bert_dir, data_dir, tmp_path):
    straight = run_cli(*tiny_train_args(tiny_bert_dir, data_dir, tmp_path / "straight", *SCHEDULE), check=False, env=TINY_ENV)
    assert straight.returncode == 0, straight.stderr

    crashed = tmp_path / "crashed"
    args = tiny_train_args(tiny_bert_dir, data_dir, crashed, *SCHEDULE)
    checkpoints = crashed / "checkpoints"
    assert kill_at_next_checkpoint(args, checkpoints) == "checkpoint-4"
    # Without --resume, the same command would start over and delete that progress: refused.
    again = cli(*args, check=False)
    assert again.returncode == 2 and again.stderr == (
        f"yelp-lora train: error: {crashed} holds an interrupted run's checkpoint-4: pass --resume to continue it, "
        f"or delete {checkpoints} to start over\n")
    assert (checkpoints / "checkpoint-4").is_dir()
    assert kill_at_next_checkpoint([*args, "--resume"], checkpoints) == "checkpoint-8"
    # The end of an epoch is checkpointed after its validation, never before: resumed from here, the
    # run must not skip epoch 1's score.
    history = json.loads((checkpoints / "checkpoint-8" / "trainer_state.json").read_text())["log_history"]
    assert [entry["epoch"] for entry in history if "eval_macro_f1" in entry] == [1.0]
    assert kill_at_next_checkpoint([*args, "--resume"], checkpoints) == "checkpoint-12"
    assert not (crashed / "run.json").exists()
    # Until run.json is written, the adapter in the run directory is an epoch's, not the run's.
    stopped = cli("evaluate", "--adapter", str(crashed), check=False)
    assert stopped.returncode == 2 and stopped.stderr.startswith(
        f"yelp-lora evaluate: error: {crashed} holds no finished run (no run.json)"), stopped.stderr
    # What a kill during a later save leaves behind: a hidden, partial staging directory.
    partial = checkpoints / ".staging-checkpoint-16" / "checkpoint-16"
    partial.mkdir(parents=True)
    (partial / "adapter_model.safetensors").write_bytes(b"\x00" * 10)

    changed = cli(*args, "--resume", "--seed", "7", check=False)
    assert changed.returncode == 2 and "train.seed: 42 -> 7" in changed.stderr, changed.stderr

    resumed = run_cli(*args, "--resume", check=False, env=TINY_ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    adapter = "adapter/adapter_model.safetensors"
    assert (crashed / adapter).read_bytes() == (tmp_path / "straight" / adapter).read_bytes()
    before, after = (json.loads((d / "run.json").read_text()) for d in (tmp_path / "straight", crashed))
    assert [score["epoch"] for score in after["validation"]] == [1.0, 2.0, 3.0]
    assert after["validation"] == before["validation"]
    assert after["best_epoch"] == before["best_epoch"] and after["global_step"] == before["global_step"] == 24
    # Logged training loss is a running mean since the last log, restarted on resume; the
    # gradients themselves must match step for step.
    assert [h["grad_norm"] for h in after["history"]] == [h["grad_norm"] for h in before["history"]]
    assert not checkpoints.exists(), "checkpoints are removed once the run is complete"


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    result = cli("train", "--resume", "--output-dir", str(tmp_path / "nothing"), check=False)
    assert result.returncode == 2
    assert "--resume: no checkpoint to resume from" in result.stderr and "Traceback" not in result.stderr


def test_resumed_from_the_checkpoint_that_ended_a_run_mid_epoch_it_trains_no_further(tiny_bert_dir, data_dir, tmp_path):
    # max_steps 4 of an epoch's 8: the run's last step is checkpointed after its validation.
    args = tiny_train_args(tiny_bert_dir, data_dir, tmp_path / "run", "--max-steps", "4", "--save-steps", "4")
    assert kill_at_next_checkpoint(args, tmp_path / "run" / "checkpoints") == "checkpoint-4"
    # How often it checkpoints may change on resume: nothing the run learns depends on it.
    resumed = run_cli(*args[:-1], "2", "--resume", check=False, env=TINY_ENV)
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    # transformers alone takes, and validates, a fifth step before it checks max_steps.
    assert record["global_step"] == 4
    assert [score["epoch"] for score in record["validation"]] == [0.5]


def test_ctrl_c_says_what_was_kept_and_how_to_go_on(tiny_bert_dir, data_dir, tmp_path):
    args = tiny_train_args(tiny_bert_dir, data_dir, tmp_path / "run", *SCHEDULE)
    checkpoints = tmp_path / "run" / "checkpoints"
    # SIGINT as a terminal sends it, even where this test runs in a background job (which ignores it).
    process = subprocess.Popen([PYTHON, "-m", "yelp_lora", *args], env=cli_env(**TINY_ENV), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while not any(checkpoints.glob("checkpoint-*")):
        assert process.poll() is None and time.time() < deadline, "training ended before its first checkpoint"
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 130, stderr[-2000:]
    [kept] = checkpoints.glob("checkpoint-*")  # save_total_limit 1
    assert stderr.endswith(f"yelp-lora train: interrupted; {kept} is kept: the same command with --resume goes on from it\n")
    assert "Traceback" not in stderr


def test_resume_refuses_data_that_changed_since_the_checkpoint(tiny_bert_dir, data_dir, tmp_path):
    import shutil

    data = tmp_path / "data"  # the run's data, edited between the kill and the resume
    data.mkdir()
    for name in ("train.csv", "test.csv"):
        shutil.copy(data_dir / name, data / name)
    args = tiny_train_args(tiny_bert_dir, data, tmp_path / "run", *SCHEDULE)
    assert kill_at_next_checkpoint(args, tmp_path / "run" / "checkpoints") == "checkpoint-4"
    lines = (data / "train.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    (data / "train.csv").write_text("".join(lines[:1] + lines[1:][::-1]), encoding="utf-8")  # same rows, other ids
    resumed = cli(*args, "--resume", check=False)
    assert resumed.returncode == 2, resumed.stderr
    assert "--resume: the data differ from the interrupted run's (train rows " in resumed.stderr
    assert f"delete {tmp_path / 'run' / 'checkpoints'} to start over" in resumed.stderr


def test_a_resume_checkpoints_at_its_own_interval(tiny_bert_dir, data_dir, tmp_path):
    args = tiny_train_args(tiny_bert_dir, data_dir, tmp_path / "run", *SCHEDULE)  # every 4 steps
    checkpoints = tmp_path / "run" / "checkpoints"
    assert kill_at_next_checkpoint(args, checkpoints) == "checkpoint-4"
    every_2 = [*args[: args.index("--save-steps") + 1], "2", *args[args.index("--save-steps") + 2:], "--resume"]
    assert kill_at_next_checkpoint(every_2, checkpoints) == "checkpoint-6"
