"""`train --report-to mlflow | tensorboard`: tiny real runs through the Trainer's own integrations,
read back with each tool's own reader; the environment is left as it was found."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from support import cli, read_json, tiny_train_args

from yelp_lora.training.tracking import _environment, default_mlflow_uri

STEPS = 3
TRACKING_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "TENSORBOARD_LOGGING_DIR")


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No tracking variables set, and a working directory of its own (where mlflow would put ./mlruns)."""
    for key in TRACKING_ENV:
        monkeypatch.delenv(key, raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def _train(tiny_bert_dir: Path, data_dir: Path, out: Path, report_to: str):
    """A tiny run, in this process (so its effect on the environment shows), a loss logged every step."""
    return cli(*tiny_train_args(tiny_bert_dir, data_dir, out, "--max-steps", str(STEPS), "--logging-steps", "1",
                                "--report-to", report_to))


def test_mlflow_logs_parameters_losses_scores_and_the_adapter_to_the_run_dirs_store(tiny_bert_dir, data_dir, tmp_path, clean_env):
    import mlflow
    from mlflow import MlflowClient

    for name in ("first", "second"):  # the second run must not log into the first one's store
        out = tmp_path / name
        _train(tiny_bert_dir, data_dir, out, "mlflow")
        assert not any(key in os.environ for key in TRACKING_ENV), {k: os.environ.get(k) for k in TRACKING_ENV}
        assert not mlflow.is_tracking_uri_set() and mlflow.active_run() is None

        client = MlflowClient(tracking_uri=default_mlflow_uri(out))
        experiment = client.get_experiment_by_name("yelp-lora")
        (run,) = client.search_runs([experiment.experiment_id])
        assert run.info.run_name == name and run.info.status == "FINISHED"
        record = read_json(out / "run.json")
        # the Trainer's parameters (its arguments and the model's config)
        params = run.data.params
        assert float(params["learning_rate"]) == record["config"]["train"]["learning_rate"]
        assert params["max_steps"] == str(STEPS) and params["seed"] == str(record["config"]["train"]["seed"])
        assert params["hidden_size"] == "32"  # the tiny BERT
        # ... and ours, which the Trainer does not know: the run config, flattened
        assert params["yelp_lora.lora.r"] == str(record["config"]["lora"]["r"])
        assert params["yelp_lora.model.truncation"] == record["config"]["model"]["truncation"]
        assert params["yelp_lora.data.source"] == record["config"]["data"]["source"]
        # the per-step training loss, as run.json's history holds it
        losses = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in losses] == list(range(1, STEPS + 1))
        assert [m.value for m in losses] == pytest.approx([h["loss"] for h in record["history"] if "loss" in h])
        best = record["best_epoch"]
        assert run.data.metrics["eval_macro_f1"] == pytest.approx(best["macro_f1"])
        assert run.data.metrics["best_macro_f1"] == pytest.approx(best["macro_f1"])
        # the kept adapter, in the run directory's own artifact store
        logged = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "adapter")}
        assert {"yelp_lora.json", "adapter_model.safetensors", "adapter_config.json"} <= logged
        assert "run.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
        assert run.info.artifact_uri.startswith((out / "mlartifacts").resolve().as_uri())
        assert not list(clean_env.iterdir())  # nothing (no ./mlruns) in the working directory


def test_tensorboard_writes_the_training_loss_under_the_run_dir(tiny_bert_dir, data_dir, tmp_path, clean_env, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "elsewhere"))  # the run's own setting wins, then this is back
    out = tmp_path / "run"
    _train(tiny_bert_dir, data_dir, out, "tensorboard")
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists()

    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/loss", "eval/macro_f1"} <= set(scalars)
    record = read_json(out / "run.json")
    logged = events.Scalars("train/loss")
    assert [e.step for e in logged] == list(range(1, STEPS + 1))
    assert [e.value for e in logged] == pytest.approx([h["loss"] for h in record["history"] if "loss" in h])


@pytest.mark.parametrize("integration", ["mlflow", "tensorboard"])
def test_an_integration_not_installed_is_a_clear_error_before_any_data_is_read(integration, tiny_bert_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, integration, None)  # `import mlflow` now raises ImportError, as when it is missing
    out = tmp_path / "run"
    result = cli(*tiny_train_args(tiny_bert_dir, tmp_path / "no-such-data.csv", out, "--report-to", integration), check=False)
    assert result.returncode == 2
    assert (f"error: train.report_to={integration} needs the {integration} package: "
            "pip install 'yelp-lora[tracking]'") in result.stderr  # and not the missing data: checked first
    assert not out.exists()


def test_a_tracking_server_that_does_not_answer_is_a_clear_error_before_any_data_is_read(tiny_bert_dir, tmp_path, monkeypatch):
    import socket

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    out = tmp_path / "run"
    result = cli(*tiny_train_args(tiny_bert_dir, tmp_path / "no-such-data.csv", out, "--report-to", "mlflow"), check=False)
    assert result.returncode == 2
    assert f"error: the MLflow tracking server http://127.0.0.1:{port} ($MLFLOW_TRACKING_URI) does not answer" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("uri, fragment", [
    ("file:///STORE", "The filesystem tracking backend"),  # MLflow 3's file store refuses unless opted in
    ("bogus://x", "unsupported URI 'bogus://x'"),
])
def test_a_store_mlflow_refuses_is_a_clear_error_before_any_data_is_read(uri, fragment, tiny_bert_dir, tmp_path, monkeypatch):
    uri = uri.replace("/STORE", str(tmp_path / "store"))
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = tmp_path / "run"
    result = cli(*tiny_train_args(tiny_bert_dir, tmp_path / "no-such-data.csv", out, "--report-to", "mlflow"), check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"error: MLflow cannot use $MLFLOW_TRACKING_URI {uri}: " in result.stderr and fragment in result.stderr
    assert not out.exists()


def test_environment_restores_what_it_set_and_what_a_library_set_inside_it(monkeypatch):
    monkeypatch.setenv("YELP_LORA_TEST_SET", "before")
    monkeypatch.delenv("YELP_LORA_TEST_NEW", raising=False)
    monkeypatch.delenv("YELP_LORA_TEST_LIBRARY", raising=False)
    with pytest.raises(RuntimeError):
        with _environment("YELP_LORA_TEST_LIBRARY", YELP_LORA_TEST_SET="during", YELP_LORA_TEST_NEW="during"):
            assert os.environ["YELP_LORA_TEST_SET"] == os.environ["YELP_LORA_TEST_NEW"] == "during"
            os.environ["YELP_LORA_TEST_LIBRARY"] = "set by a library"  # as mlflow.set_tracking_uri does
            raise RuntimeError("the run failed")
    assert os.environ["YELP_LORA_TEST_SET"] == "before"
    assert "YELP_LORA_TEST_NEW" not in os.environ and "YELP_LORA_TEST_LIBRARY" not in os.environ
