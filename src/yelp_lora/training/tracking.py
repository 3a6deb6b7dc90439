"""Experiment tracking through the Trainer's own integrations (`train.report_to`).

TensorBoard writes its event files to RUN_DIR/tensorboard/ (the Trainer's default, under the
checkpoint directory, is deleted when a run ends). MLflow logs to $MLFLOW_TRACKING_URI, by default
a SQLite store in the run directory (RUN_DIR/mlflow.db, its artifacts in RUN_DIR/mlartifacts/); the
run is opened here, so the Trainer's callback logs its parameters and per-step metrics into it, and
the kept adapter is logged as an artifact once the run is over. Inside an active MLflow run (a
`tune` study's) it is a nested run. Environment variables and mlflow's tracking URI set for a run
are restored after it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from yelp_lora.artifacts import ADAPTER_DIRNAME
from yelp_lora.config import TrainConfig
from yelp_lora.errors import ConfigError

MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS_DIRNAME = "mlartifacts"
TENSORBOARD_DIRNAME = "tensorboard"


def default_mlflow_uri(directory: Path) -> str:
    return f"sqlite:///{(directory / MLFLOW_DB).resolve()}"


@contextlib.contextmanager
def _environment(*restored: str, **values: str):
    """Set environment variables for the duration of one run, then restore them, and the `restored`
    ones a library sets by itself on the way (mlflow.set_tracking_uri sets MLFLOW_TRACKING_URI)."""
    before = {key: os.environ.get(key) for key in (*restored, *values)}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def tracked(train: TrainConfig, output_dir: Path):
    """The tracking context of one training run; yields a function that logs its final figures."""
    if train.report_to == "none":
        yield lambda figures: None
        return
    if train.report_to == "tensorboard":
        _require("tensorboard", "tensorboard")
        with _environment(TENSORBOARD_LOGGING_DIR=str(output_dir / TENSORBOARD_DIRNAME)):
            yield lambda figures: None
        return
    mlflow = _require("mlflow", "mlflow")
    output_dir.mkdir(parents=True, exist_ok=True)
    nested = mlflow.active_run() is not None  # a study sets its own store and experiment
    previous_uri = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    with _environment("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID"):
        try:
            if not nested:
                uri = os.environ.get("MLFLOW_TRACKING_URI")
                mlflow.set_tracking_uri(uri or default_mlflow_uri(output_dir))
                # In the run's own store, artifacts go beside it (mlflow's default is ./mlruns of the cwd).
                _use_experiment(mlflow, os.environ.get("MLFLOW_EXPERIMENT_NAME") or "yelp-lora",
                                None if uri else output_dir / MLFLOW_ARTIFACTS_DIRNAME)
            with mlflow.start_run(run_name=output_dir.name, nested=nested):
                # The Trainer's callback finds this run active and logs into it rather than opening its own.
                os.environ["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
                yield lambda figures: _finish_mlflow(mlflow, output_dir, figures)
        finally:
            if not nested:
                mlflow.set_tracking_uri(previous_uri)


def _use_experiment(mlflow, name: str, artifacts: Path | None) -> None:
    if artifacts is not None and mlflow.get_experiment_by_name(name) is None:
        mlflow.create_experiment(name, artifact_location=artifacts.resolve().as_uri())
    mlflow.set_experiment(name)


def _finish_mlflow(mlflow, output_dir: Path, figures: dict[str, float]) -> None:
    mlflow.log_metrics({key: value for key, value in figures.items() if value is not None})
    adapter = output_dir / ADAPTER_DIRNAME
    if adapter.is_dir():
        mlflow.log_artifacts(str(adapter), artifact_path=ADAPTER_DIRNAME)


def require(train: TrainConfig) -> None:
    """Fail before any data is read when train.report_to names an integration that is not installed."""
    if train.report_to != "none":
        _require(train.report_to, train.report_to)


def _require(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"train.report_to={module} needs the {package} package: pip install 'yelp-lora[tracking]'"
        ) from None
