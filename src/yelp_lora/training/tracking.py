"""Experiment tracking through the Trainer's own integrations (`train.report_to`).

TensorBoard writes its event files to RUN_DIR/tensorboard/ (the Trainer's default, under the
checkpoint directory, is deleted when a run ends). MLflow logs to $MLFLOW_TRACKING_URI, by default
a SQLite store in the run directory (RUN_DIR/mlflow.db, its artifacts in RUN_DIR/mlartifacts/); the
run is opened here, so the Trainer's callback logs its parameters and per-step metrics into it, and
the kept adapter is logged as an artifact once the run is over. Inside an active MLflow run (a
`tune` study's, `study_run`) it is a nested run. Environment variables and mlflow's tracking URI
set for a run or a study are restored after it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from yelp_lora.artifacts import ADAPTER_DIRNAME, RUN_FILE
from yelp_lora.config import RunConfig, TrainConfig
from yelp_lora.errors import ConfigError

MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS_DIRNAME = "mlartifacts"
TENSORBOARD_DIRNAME = "tensorboard"
MLFLOW_PROBE_S = 10  # how long a tracking server is given to answer before training starts


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
def tracked(config: RunConfig, output_dir: Path):
    """The tracking context of one training run; yields a function that logs its final figures."""
    train = config.train
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
    nested = mlflow.active_run() is not None  # a study has opened its store and experiment
    with contextlib.nullcontext() if nested else _store(mlflow, output_dir):
        with mlflow.start_run(run_name=output_dir.name, nested=nested):
            # The Trainer's callback finds this run active and logs into it rather than opening its own;
            # it logs the Trainer's arguments, not the settings that are ours (LoRA, data, losses).
            os.environ["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
            mlflow.log_params(_flat(config.model_dump(mode="json"), "yelp_lora"))
            yield lambda figures: _finish_mlflow(mlflow, output_dir, figures)


@contextlib.contextmanager
def study_run(train: TrainConfig, output_dir: Path, name: str, run_id: str | None = None):
    """The parent MLflow run of a `tune` study, when its base config reports to MLflow (else yields None):
    each trial's training run nests in it. `run_id`: an earlier invocation's parent run, reopened on
    resume if this store holds it. Yields the mlflow module, with the parent run active."""
    if train.report_to != "mlflow":
        yield None
        return
    require(train)
    mlflow = _require("mlflow", "mlflow")
    with _store(mlflow, output_dir):
        if run_id is not None and not _holds_run(mlflow, run_id):
            run_id = None  # another store ($MLFLOW_TRACKING_URI changed): start afresh there
        with mlflow.start_run(run_id=run_id, run_name=None if run_id else name):
            yield mlflow


@contextlib.contextmanager
def _store(mlflow, directory: Path):
    """$MLFLOW_TRACKING_URI, else a SQLite store in `directory` whose artifacts are kept beside it;
    the environment and mlflow's own tracking URI are left as they were found."""
    directory.mkdir(parents=True, exist_ok=True)
    previous_uri = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    # mlflow.set_tracking_uri sets MLFLOW_TRACKING_URI itself, and set_experiment MLFLOW_EXPERIMENT_ID.
    with _environment("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID"):
        try:
            experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "yelp-lora"
            uri = os.environ.get("MLFLOW_TRACKING_URI")
            mlflow.set_tracking_uri(uri or default_mlflow_uri(directory))
            if not uri and mlflow.get_experiment_by_name(experiment) is None:
                # Left to itself, MLflow would put them in ./mlruns of wherever the command was run.
                artifacts = (directory / MLFLOW_ARTIFACTS_DIRNAME).resolve().as_uri()
                mlflow.create_experiment(experiment, artifact_location=artifacts)
            mlflow.set_experiment(experiment)
            yield
        finally:
            mlflow.set_tracking_uri(previous_uri)


def _holds_run(mlflow, run_id: str) -> bool:
    try:
        mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True


def _flat(values: dict, prefix: str) -> dict[str, str]:
    """{"lora": {"r": 8}} -> {"PREFIX.lora.r": "8"}: a run config as MLflow parameters."""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}.{key}"
        flat.update(_flat(value, name) if isinstance(value, dict) else {name: str(value)})
    return flat


def _finish_mlflow(mlflow, output_dir: Path, figures: dict[str, float]) -> None:
    mlflow.log_metrics({key: value for key, value in figures.items() if value is not None})
    adapter = output_dir / ADAPTER_DIRNAME
    if adapter.is_dir():
        mlflow.log_artifacts(str(adapter), artifact_path=ADAPTER_DIRNAME)
    if (output_dir / RUN_FILE).is_file():  # the rows' fingerprints, the history, the environment
        mlflow.log_artifact(str(output_dir / RUN_FILE))


def require(train: TrainConfig) -> None:
    """Fail before any data is read when train.report_to names an integration that is not installed,
    an MLflow tracking server that does not answer (mlflow itself retries for minutes, silently), or
    a store MLflow will not open."""
    if train.report_to != "none":
        _require(train.report_to, train.report_to)
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if train.report_to == "mlflow" and uri.startswith(("http://", "https://")):
        import ssl
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=MLFLOW_PROBE_S).close()
        except urllib.error.HTTPError:
            pass  # it answered (behind a proxy or a login, say): mlflow's own calls will tell
        except (OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            if isinstance(reason, ssl.SSLError):  # it answered; mlflow may trust what urllib does not (its own CA settings)
                return
            raise ConfigError(f"the MLflow tracking server {uri} ($MLFLOW_TRACKING_URI) does not answer ({reason}): "
                              "start it, or unset the variable to log into RUN_DIR/mlflow.db") from None
    elif train.report_to == "mlflow" and uri:  # a store MLflow refuses (an unknown scheme, its file store) fails now too
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        try:
            MlflowClient(tracking_uri=uri)
        except MlflowException as err:
            raise ConfigError(f"MLflow cannot use $MLFLOW_TRACKING_URI {uri}: {' '.join(str(err).split())}") from None


def _require(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"train.report_to={module} needs the {package} package: pip install 'yelp-lora[tracking]'"
        ) from None
