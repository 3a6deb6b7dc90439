"""`yelp-lora tune`: real Optuna studies whose trials are real (small) training runs, on a data
directory that holds a train split and no test file at all."""

from __future__ import annotations

import csv
import shutil
import sqlite3
import sys

import pytest
import torch
from support import cli

from yelp_lora.artifacts import ADAPTER_DIRNAME, RUN_FILE, read_run
from yelp_lora.config import TuneSettings, load_config
from yelp_lora.data.sources import load_split
from yelp_lora.errors import DataError
from yelp_lora.training.space import load_space
from yelp_lora.training.tune import tune

optuna = pytest.importorskip("optuna")  # the [tune] extra


def tune_args(model, data, output, space, *extra: str) -> list[str]:
    """`tune` on 40 training and 20 validation rows of 32 tokens, fp32."""
    return [
        "tune", "--model", str(model), "--data", str(data), "--precision", "fp32", "--space", str(space),
        "--set", "data.train_samples=40", "--set", "data.val_samples=20", "--output-dir", str(output), *extra,
    ]


def load_study(output):
    return optuna.load_study(study_name="yelp-lora", storage=f"sqlite:///{output / 'study.db'}")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The trials train in this process: one thread each, as the tiny-BERT subprocesses run (two threads
    on the 2 shared cores ran several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def train_only_data(tmp_path_factory, data_dir):
    """The real train.csv in a directory without any test file: a run that asked for one would fail."""
    directory = tmp_path_factory.mktemp("train-only")
    (directory / "train.csv").symlink_to(data_dir / "train.csv")
    return directory


@pytest.fixture(scope="module")
def study(tmp_path_factory, train_only_data):
    """Two trials of the packaged MiniLM (whose scores differ from trial to trial, unlike the tiny
    random BERT's, which predicts one class whatever it is given): one epoch each, with the learning
    rate, LoRA alpha and dropout, warmup and weight decay searched."""
    root = tmp_path_factory.mktemp("study")
    space = root / "space.yaml"
    space.write_text(
        "model: {max_length: 32, truncation: head}\n"
        "lora: {r: 4, alpha: [8, 16], target_modules: query+value}\n"
        "train: {learning_rate: {low: 1.0e-5, high: 5.0e-2, log: true}, epochs: 1, train_batch_size: 8,\n"
        "        class_weights: null, label_smoothing: null, ordinal_weight: null}\n"
    )
    # Weight decay, which the default space searches, given by --set: every trial keeps it.
    result = cli(*tune_args("minilm", train_only_data, root / "out", space, "--trials", "2", "--set", "train.weight_decay=0.02"))
    return root / "out", space, result


def test_a_study_writes_its_trials_best_config_table_and_figures(study):
    out, _, result = study
    trials = load_study(out).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    # Fixed in the space (one value): set on every trial, never drawn.
    assert set(trials[0].params) == {"lora.alpha", "lora.dropout", "train.learning_rate", "train.warmup_ratio"}
    assert result.stderr.startswith("tune: train.weight_decay stays 0.02 in every trial (a flag or --set gave it), not searched\n")
    best = max(trials, key=lambda t: t.value)
    best_config = load_config(out / "best.yaml")
    _, record = read_run(out / "trials" / f"trial-{best.number:03d}")
    assert best_config == record.config  # exactly what the best trial trained with
    assert best.value == record.best_epoch.macro_f1
    assert (best_config.lora.r, best_config.lora.target_modules, best_config.model.max_length) == (4, ["query", "value"], 32)
    assert best_config.lora.alpha == best.params["lora.alpha"]
    assert best_config.train.learning_rate == best.params["train.learning_rate"]
    assert best_config.data.train_samples == 40 and best_config.train.precision == "fp32"  # the base config's
    assert {read_run(path.parent)[1].config.train.weight_decay for path in (out / "trials").glob(f"*/{RUN_FILE}")} == {0.02}
    # Only the best trial keeps its adapter; every trial keeps its run.json.
    for trial in trials:
        trial_dir = out / "trials" / f"trial-{trial.number:03d}"
        assert (trial_dir / RUN_FILE).is_file()
        assert (trial_dir / ADAPTER_DIRNAME).is_dir() == (trial.number == best.number)
    with open(out / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["number"], r["state"]) for r in rows] == [("0", "COMPLETE"), ("1", "COMPLETE")]
    assert float(rows[best.number]["value"]) == best.value
    assert float(rows[0]["train.learning_rate"]) == trials[0].params["train.learning_rate"]
    assert float(rows[0]["duration_s"]) > 0
    for figure in ("optimization_history.png", "param_importances.png"):
        assert (out / figure).read_bytes().startswith(b"\x89PNG")
    assert f"Best trial {best.number}: validation macro-F1 {best.value:.4f}" in result.stdout


def test_the_trials_read_no_test_file(study, train_only_data):
    """The study ran from a directory that has no test split: any read of one would have failed it."""
    with pytest.raises(DataError, match="has no test split"):
        load_split(str(train_only_data), "test")
    out = study[0]
    for run_file in (out / "trials").glob(f"*/{RUN_FILE}"):
        _, record = read_run(run_file.parent)
        assert record.config.data.source == str(train_only_data) and record.data.validation.source.endswith("train.csv")


def test_a_resumed_study_continues_up_to_the_total_and_fails_an_abandoned_trial(study, train_only_data, tmp_path):
    original, space, _ = study
    out = tmp_path / "out"
    shutil.copytree(original, out)  # the module's study stays as it was
    before = load_study(out).get_trials()
    # A trial a killed process left RUNNING, its last heartbeat long ago.
    abandoned = load_study(out).ask()
    with sqlite3.connect(out / "study.db") as db:
        (trial_id,) = db.execute("SELECT trial_id FROM trials WHERE number = ?", (abandoned.number,)).fetchone()
        db.execute("INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (?, '2000-01-01 00:00:00')", (trial_id,))

    # Another base config is another study: refused, nothing run.
    resume_args = [*tune_args("minilm", train_only_data, out, space, "--trials", "3"), "--set", "train.weight_decay=0.02"]
    refused = cli(*resume_args, "--set", "train.lr_scheduler=cosine", check=False)
    assert refused.returncode == 2
    assert "was started with another base config (train.lr_scheduler: 'linear' -> 'cosine')" in refused.stderr
    # Another study in the same directory would write over this one's trials, best.yaml and figures.
    other = cli(*resume_args, "--study-name", "other", check=False)
    assert other.returncode == 2 and (f"--output-dir {out} holds study 'yelp-lora': one study per output directory"
                                      in other.stderr), other.stderr

    cli(*resume_args)
    after = load_study(out).get_trials()
    assert [t.state.name for t in after] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    for earlier, now in zip(before, after):  # kept as they were
        assert (now.value, now.params, now.datetime_start) == (earlier.value, earlier.params, earlier.datetime_start)
    # The resumed sampler draws afresh rather than repeating the first invocation's draws.
    assert after[3].params not in (after[0].params, after[1].params)
    assert [row["state"] for row in csv.DictReader((out / "trials.csv").read_text().splitlines())] == [
        "COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]

    # Asked for no more than the study holds, it runs nothing and rewrites its files.
    again = cli(*resume_args[:-4], "--trials", "2", *resume_args[-2:])
    assert len(load_study(out).get_trials()) == 4
    assert "the study already holds 3 finished trials" in again.stdout


@pytest.mark.parametrize("epochs, states", [(2, ["PRUNED"]), (1, ["COMPLETE"])])
def test_the_pruner_stops_a_trial_after_an_epoch_but_never_after_its_last(tmp_path, tiny_bert_dir, train_only_data,
                                                                         epochs, states):
    base = load_config(None, {
        "model.name_or_path": str(tiny_bert_dir), "data.source": str(train_only_data), "data.train_samples": 40,
        "data.val_samples": 20, "train.precision": "fp32",
    })
    space_file = tmp_path / "space.yaml"
    space_file.write_text(f"model: {{max_length: 32}}\ntrain: {{epochs: {epochs}}}\n")
    out = tmp_path / "out"
    # Any macro-F1 below 1 is below this pruner's bar: every epoch but a last one is pruned.
    result = tune(base, load_space(space_file), TuneSettings(output_dir=out, trials=1),
                  pruner=optuna.pruners.ThresholdPruner(lower=1.0))
    (trial,) = load_study(out).get_trials()
    assert [trial.state.name] == states
    assert list(trial.intermediate_values) == [1]  # the first epoch's validation macro-F1, reported as step 1
    _, record = read_run(out / "trials" / "trial-000")
    assert len(record.validation) == 1  # the pruned run stopped after the first of its two epochs
    assert trial.intermediate_values[1] == record.validation[0].macro_f1
    assert f"0,{states[0]}," in (out / "trials.csv").read_text()
    if states == ["PRUNED"]:
        assert not (out / "trials" / "trial-000" / ADAPTER_DIRNAME).exists()
        assert not (out / "best.yaml").exists() and not (out / "optimization_history.png").exists()
        assert "no complete trial yet: no best.yaml" in result.notes
    else:
        assert (out / "trials" / "trial-000" / ADAPTER_DIRNAME).is_dir() and (out / "best.yaml").is_file()
        assert any("param_importances.png: importances need at least 2 complete trials" in n for n in result.notes)


def test_mlflow_nests_each_trial_in_the_study_run(tmp_path, tiny_bert_dir, train_only_data, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    space = tmp_path / "space.yaml"
    space.write_text("model: {max_length: 32}\ntrain: {epochs: 1}\n")
    out = tmp_path / "out"
    cli(*tune_args(tiny_bert_dir, train_only_data, out, space, "--trials", "1", "--report-to", "mlflow"))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("yelp-lora").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    (child,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.data.tags["optuna.study"] == "yelp-lora" and "best_macro_f1" in parent.data.metrics
    assert child.info.run_name == "trial-000" and child.data.tags["optuna.trial"] == "0"
    assert float(child.data.params["optuna.train.learning_rate"]) == load_study(out).trials[0].params["train.learning_rate"]
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"best.yaml", "trials.csv"}
    assert (out / "mlartifacts").is_dir()  # beside the store, not in ./mlruns of the working directory


@pytest.mark.parametrize(
    "space, extra, fragment",
    [
        ("train: {learning_rat: [1.0e-3]}\n", [], "space file SPACE: train.learning_rat: not a search parameter (they are: "),
        ("lora: {r: []}\n", [], "lora.r: no choices: give at least one, or null to keep the base config's value"),
        ("train: {learning_rate: {low: 1.0e-2, high: 1.0e-3}}\n", [], "train.learning_rate: low 0.01 is above high 0.001"),
        ("train: {epochs: {low: 0, high: 2}}\n", [], "search space train.epochs: 0 makes no valid run config"),
        ("lora: {target_modules: [query]}\n", [], "lora.target_modules.0: Input should be 'query+value', 'attention'"),
        ("[1, 2]\n", [], "space file SPACE must hold a mapping"),
        ("", ["--storage", "nosuchdb://somewhere"], "--storage nosuchdb://somewhere: cannot open the study's database"),
        ("", ["--trials", "0"], "--trials must be at least 1 (got 0)"),
        ("train: {learning_rate: [1.0e-3]}\n", ["--lr", "1e-3"],
         "train.learning_rate: given by a flag or --set and by the space file SPACE: give one"),
        # Checked before the study exists, so that it holds no failed trial for it.
        ("", ["--data", "./no-such-data.csv"], "data path not found: ./no-such-data.csv"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_bert_dir, train_only_data, space, extra, fragment):
    space_file = tmp_path / "space.yaml"
    space_file.write_text(space)
    data = train_only_data
    if extra[:1] == ["--data"]:  # in place of tune_args' own: a flag given twice is refused
        data, extra = extra[1], extra[2:]
    result = cli(*tune_args(tiny_bert_dir, data, tmp_path / "out", space_file, *extra), check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("yelp-lora tune: error: ") and result.stderr.count("\n") == 1
    assert fragment.replace("SPACE", str(space_file)) in result.stderr
    assert not (tmp_path / "out" / "trials").exists() and not (tmp_path / "out" / "study.db").exists()


def test_without_optuna_it_says_what_to_install(tmp_path, tiny_bert_dir, train_only_data, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if the [tune] extra were not installed
    space = tmp_path / "space.yaml"
    space.write_text("")
    result = cli(*tune_args(tiny_bert_dir, train_only_data, tmp_path / "out", space), check=False)
    assert result.returncode == 2
    assert result.stderr == "yelp-lora tune: error: yelp-lora tune needs optuna: pip install 'yelp-lora[tune]'\n"
