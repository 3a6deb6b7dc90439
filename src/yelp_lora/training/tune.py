"""`yelp-lora tune`: a hyperparameter search with Optuna over a base run config.

Each trial is one real training run (recipe.train) of the base config with the trial's values of the
search space (training.space.SearchSpace), scored by its best validation macro-F1; validation is carved from
the train split, and no test file is read. Optuna's TPE sampler draws the values; a median pruner
stops a trial after an epoch whose validation macro-F1 is below the median of the earlier trials'
at that epoch (never after its last epoch, where stopping saves nothing).

The study lives in Optuna's RDB storage (OUTPUT_DIR/study.db by default), so a killed search
resumes: `--trials N` asks for N finished (complete or pruned) trials in all. A trial left running
by a killed process never counts; its heartbeat stops, and the first trial started on the study
more than STALE_AFTER seconds later marks it failed. A study records its base config and search
space, and refuses to resume with others. One study per output directory.

OUTPUT_DIR/trials/trial-NNN/ is each trial's run directory. Only the best complete trial keeps its
adapter; every other finished trial keeps its run.json (config, epochs, timings) and loses its
adapter, which is most of a run's size. best.yaml (the best trial's whole run config, which
`yelp-lora train --config` takes), trials.csv and the figures are rewritten at the end of every
invocation, interrupted or not. With train.report_to mlflow, the study is a parent MLflow run
(reopened on resume) and each trial's training run nests in it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from yelp_lora.artifacts import ADAPTER_DIRNAME, CHECKPOINT_DIRNAME
from yelp_lora.config import RunConfig, TuneSettings, changed_fields, with_overrides
from yelp_lora.data.mixing import training_rows
from yelp_lora.errors import USER_ERRORS, ConfigError
from yelp_lora.training.recipe import refuse_registry_version, train
from yelp_lora.training.space import FloatRange, IntRange, SearchSpace, config_value
from yelp_lora.training.tracking import study_run
from yelp_lora.util.atomic import atomic_write_bytes, atomic_write_text, check_output_dir

STUDY_DB = "study.db"
TRIALS_DIRNAME = "trials"
STUDY_CLAIM_FILE = "study.json"  # the study this output directory holds: {study_name, storage}
BEST_CONFIG_FILE = "best.yaml"
TRIALS_CSV = "trials.csv"
HISTORY_FIGURE = "optimization_history.png"
IMPORTANCE_FIGURE = "param_importances.png"
# A running trial's process writes a heartbeat this often (seconds); a trial whose last one is
# older than STALE_AFTER was left by a killed process and is marked failed.
HEARTBEAT_INTERVAL = 30
STALE_AFTER = 120
# What the study records about itself, so that a resumed study refuses to mix in other runs.
BASE_CONFIG_ATTR, SPACE_ATTR, MLFLOW_RUN_ATTR = "base_config", "search_space", "mlflow_run_id"
# What each trial records: its run directory (relative to OUTPUT_DIR) and its whole run config.
RUN_DIR_ATTR, CONFIG_ATTR = "run_dir", "config"


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("yelp-lora tune needs optuna: pip install 'yelp-lora[tune]'") from None
    return optuna


@dataclass
class TuneResult:
    """What one invocation of tune leaves: the study's state, its best trial, the files written."""

    study_name: str
    storage: str
    trials_run: int  # trials the study gained during this invocation
    counts: dict[str, int]  # trials in the study, by state
    best_number: int | None = None
    best_value: float | None = None
    best_params: dict = field(default_factory=dict)
    best_run_dir: Path | None = None
    written: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def tune(base: RunConfig, space: SearchSpace, settings: TuneSettings, *, pruner=None) -> TuneResult:
    """Run (or resume) the study until it holds `settings.trials` finished trials or time runs out.

    `pruner`: an Optuna pruner in place of the median pruner (the tests force a prune with one).
    """
    optuna = _optuna()
    space.check(base)  # a value no trial could train with fails now, not hours in
    output_dir = Path(settings.output_dir)
    check_output_dir(output_dir, "--output-dir")
    refuse_registry_version(output_dir)
    training_rows(base.data, base.train.seed)  # so does data that is missing or broken, before the study records a failed trial
    output_dir.mkdir(parents=True, exist_ok=True)
    _claim(output_dir, settings)
    url = settings.storage or f"sqlite:///{(output_dir / STUDY_DB).resolve()}"
    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    study = _open_study(optuna, url, settings, base, space, pruner)
    done = len(study.get_trials(deepcopy=False, states=finished_states))
    seed = settings.seed if settings.seed is not None else base.train.seed
    # The sampler's random draws restart with each invocation: seeded by the trials already run,
    # a resumed search draws new values instead of repeating the first invocation's.
    study.sampler = optuna.samplers.TPESampler(seed=seed + done)

    remaining = settings.trials - done
    ran_before = len(study.get_trials(deepcopy=False))
    notes = [] if remaining > 0 else [f"the study already holds {done} finished trials (--trials {settings.trials})"]
    with study_run(base.train, output_dir, settings.study_name, study.user_attrs.get(MLFLOW_RUN_ATTR)) as mlflow:
        if mlflow is not None:
            study.set_user_attr(MLFLOW_RUN_ATTR, mlflow.active_run().info.run_id)
            mlflow.set_tags({"optuna.study": settings.study_name, "optuna.storage": url, "optuna.sampler_seed": seed})
        objective = _objective(optuna, base, space, output_dir, mlflow)
        trial_log = logging.getLogger("optuna.study._optimize")
        trial_log.addFilter(_no_traceback_for_user_errors)
        try:
            if remaining > 0:
                study.optimize(
                    objective, n_trials=remaining, timeout=settings.timeout * 60 if settings.timeout else None,
                    # Counts every process's trials, when several work on one study at once.
                    callbacks=[optuna.study.MaxTrialsCallback(settings.trials, states=finished_states),
                               _after_trial(optuna, output_dir, mlflow)],
                    gc_after_trial=True,
                )
        finally:
            trial_log.removeFilter(_no_traceback_for_user_errors)
            _drop_adapters(optuna, study, output_dir)
            result = TuneResult(
                study_name=settings.study_name, storage=url, trials_run=len(study.get_trials(deepcopy=False)) - ran_before,
                counts=_counts(study), notes=notes,
            )
            finished = len(study.get_trials(deepcopy=False, states=finished_states))
            if finished < settings.trials:  # stopped by --timeout, an interrupt or a failed trial
                notes.append(f"{finished} of {settings.trials} trials finished: the same command resumes the study")
            _write_outputs(optuna, study, space, output_dir, seed, result)
            if mlflow is not None:
                _log_study(mlflow, result)
    return result


def _claim(output_dir: Path, settings: TuneSettings) -> None:
    """One study per output directory: its trials/, best.yaml and figures are that study's. A second
    study there would write over them, so it is refused (the directory records the first one's name)."""
    claim_file = output_dir / STUDY_CLAIM_FILE
    ours = {"study_name": settings.study_name, "storage": settings.storage}
    if claim_file.is_file():
        try:
            held = json.loads(claim_file.read_text(encoding="utf-8"))
            held = {"study_name": held["study_name"], "storage": held["storage"]}
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{claim_file} is damaged: it should name the study this directory holds "
                              f"({json.dumps(ours)} for this command's)") from None
        if held != ours:
            where = f" in {held['storage']}" if held["storage"] else ""
            raise ConfigError(
                f"--output-dir {output_dir} holds study {held['study_name']!r}{where}: one study per output directory; "
                "give its --study-name and --storage to resume it, or another --output-dir"
            )
    else:
        atomic_write_text(claim_file, json.dumps(ours) + "\n")


def _no_traceback_for_user_errors(record: logging.LogRecord) -> bool:
    """Optuna logs a failed trial with its traceback; for a user's mistake or Ctrl-C, its message and
    the CLI's one line are enough."""
    if record.exc_info and isinstance(record.exc_info[1], (*USER_ERRORS, KeyboardInterrupt)):
        record.exc_info = None
    return True


def _open_study(optuna, url: str, settings: TuneSettings, base: RunConfig, space: SearchSpace, pruner):
    """The study of that name in that storage, created (recording its base config and space) or loaded (checking them)."""
    study = optuna.create_study(
        study_name=settings.study_name, storage=_open_storage(optuna, url), direction="maximize", load_if_exists=True,
        pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=settings.prune_startup_trials, n_warmup_steps=0),
    )
    if study.user_attrs:
        _check_same_study(study, base, space, settings.study_name)
    else:
        study.set_user_attr(BASE_CONFIG_ATTR, base.model_dump(mode="json"))
        study.set_user_attr(SPACE_ATTR, space.model_dump(mode="json"))
    return study


def _open_storage(optuna, url: str):
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=STALE_AFTER)
    except (SQLAlchemyError, ValueError, ImportError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"--storage {url}: cannot open the study's database ({reason})") from None


def _check_same_study(study, base: RunConfig, space: SearchSpace, name: str) -> None:
    """A resumed study must search the same space from the same base config: other trials' scores would not compare."""
    for attr, what, now in ((BASE_CONFIG_ATTR, "base config", base), (SPACE_ATTR, "search space", space)):
        before = study.user_attrs.get(attr)
        changed = changed_fields(before, now.model_dump(mode="json")) if before is not None else []
        if changed:
            raise ConfigError(
                f"study {name!r} was started with another {what} ({'; '.join(changed)}): give the same one "
                "to resume it, or a new --study-name / --output-dir"
            )


def trial_config(trial, base: RunConfig, space: SearchSpace) -> RunConfig:
    """The base config with the space's fixed values and this trial's draws."""
    values = dict(space.fixed())
    for name, domain in space.searched().items():
        if isinstance(domain, FloatRange):
            drawn = trial.suggest_float(name, domain.low, domain.high, log=domain.log)
        elif isinstance(domain, IntRange):
            drawn = trial.suggest_int(name, domain.low, domain.high, step=domain.step, log=domain.log)
        else:
            drawn = trial.suggest_categorical(name, domain)
        values[name] = config_value(name, drawn)
    return with_overrides(base, values)


def _objective(optuna, base: RunConfig, space: SearchSpace, output_dir: Path, mlflow):
    def objective(trial) -> float:
        config = trial_config(trial, base, space)
        run_dir = Path(TRIALS_DIRNAME) / f"trial-{trial.number:03d}"
        # Trial numbers are never reused within a study: anything there is a deleted study's.
        shutil.rmtree(output_dir / run_dir, ignore_errors=True)
        trial.set_user_attr(RUN_DIR_ATTR, str(run_dir))
        trial.set_user_attr(CONFIG_ATTR, config.model_dump(mode="json"))
        reporter = pruning_callback(trial, mlflow)
        record = train(config, output_dir / run_dir, callbacks=[reporter])
        if reporter.pruned_after is not None:
            raise optuna.TrialPruned(f"validation macro-F1 below the pruner's bar after epoch {reporter.pruned_after}")
        if record.best_epoch is None:
            raise ConfigError("the trial ran no validation (train.max_steps ends it inside the first epoch): nothing to score")
        return record.best_epoch.macro_f1

    return objective


def pruning_callback(trial, mlflow=None):
    """A TrainerCallback that reports each epoch's validation macro-F1 to the trial (step = the epoch's
    number) and, when the pruner says so, ends training after that epoch.

    It stops the Trainer (control.should_training_stop) rather than raising inside it, so train()
    still writes the run's record and closes its MLflow run; the objective then raises TrialPruned.
    """
    from transformers import TrainerCallback

    class ReportToTrial(TrainerCallback):
        def __init__(self):
            self.epochs = 0
            self.pruned_after: int | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            if mlflow is not None and mlflow.active_run() is not None:  # the trial's own, nested run
                mlflow.log_params({f"optuna.{name}": value for name, value in trial.params.items()})
                mlflow.set_tag("optuna.trial", trial.number)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            score = (metrics or {}).get("eval_macro_f1")
            if score is None:
                return
            self.epochs += 1
            trial.report(score, step=self.epochs)
            if state.global_step < state.max_steps and trial.should_prune():
                self.pruned_after = self.epochs
                control.should_training_stop = True
                if mlflow is not None and mlflow.active_run() is not None:
                    mlflow.set_tag("optuna.pruned_after_epoch", self.epochs)

    return ReportToTrial()


def _after_trial(optuna, output_dir: Path, mlflow):
    def after(study, trial) -> None:
        _drop_adapters(optuna, study, output_dir)
        if mlflow is not None and trial.state == optuna.trial.TrialState.COMPLETE:
            mlflow.log_metric("trial_macro_f1", trial.value, step=trial.number)

    return after


def _best_trial(optuna, study):
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return max(complete, key=lambda t: t.value) if complete else None


def _drop_adapters(optuna, study, output_dir: Path) -> None:
    """Delete the adapter (and any checkpoints) of every finished trial but the best complete one.

    Running trials are left alone: one may be another process's, and may yet become the best.
    """
    best = _best_trial(optuna, study)
    running = optuna.trial.TrialState.RUNNING
    for trial in study.get_trials(deepcopy=False):
        run_dir = trial.user_attrs.get(RUN_DIR_ATTR)
        if run_dir is None or trial.state == running or (best is not None and trial.number == best.number):
            continue
        for name in (ADAPTER_DIRNAME, CHECKPOINT_DIRNAME):
            shutil.rmtree(output_dir / run_dir / name, ignore_errors=True)


def _counts(study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
    return counts


# ---------------------------------------------------------------- what the study writes


def _write_outputs(optuna, study, space: SearchSpace, output_dir: Path, seed: int, result: TuneResult) -> None:
    best = _best_trial(optuna, study)
    best_file = output_dir / BEST_CONFIG_FILE
    if best is not None:
        result.best_number, result.best_value, result.best_params = best.number, best.value, dict(best.params)
        result.best_run_dir = output_dir / best.user_attrs[RUN_DIR_ATTR]
        atomic_write_text(best_file, yaml.safe_dump(best.user_attrs[CONFIG_ATTR], sort_keys=False))
        result.written.append(best_file)
    else:
        best_file.unlink(missing_ok=True)  # an earlier study's, in a reused directory
        result.notes.append(f"no complete trial yet: no {BEST_CONFIG_FILE}")
    atomic_write_text(output_dir / TRIALS_CSV, _trials_table(study, space))
    result.written.append(output_dir / TRIALS_CSV)
    for name, draw in ((HISTORY_FIGURE, _history_figure), (IMPORTANCE_FIGURE, _importance_figure)):
        path = output_dir / name
        problem = draw(optuna, study, path, seed)
        if problem:
            path.unlink(missing_ok=True)  # a figure of an earlier state would mislead
            result.notes.append(f"no {name}: {problem}")
        else:
            result.written.append(path)


def _trials_table(study, space: SearchSpace) -> str:
    """One row per trial: number, state, value (the best validation macro-F1; empty unless complete),
    the epochs it was scored after, every searched parameter, and how long it ran."""
    params = list(space.searched())
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["number", "state", "value", "epochs_scored", *params, "duration_s", "run_dir"])
    for trial in study.get_trials(deepcopy=False):
        duration = trial.duration.total_seconds() if trial.duration is not None else None
        writer.writerow([
            trial.number, trial.state.name, _cell(trial.value), len(trial.intermediate_values),
            *(_cell(trial.params.get(name)) for name in params), _cell(duration and round(duration, 1)),
            trial.user_attrs.get(RUN_DIR_ATTR, ""),
        ])
    return out.getvalue()


def _cell(value) -> str:
    return "" if value is None else str(value)  # floats in full: a trial's values can be set again exactly


def _history_figure(optuna, study, path: Path, seed: int) -> str | None:
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return "no complete trial"
    with _figure_context(optuna):
        axes = optuna.visualization.matplotlib.plot_optimization_history(study, target_name="validation macro-F1")
        _save_figure(axes, path)
    return None


def _importance_figure(optuna, study, path: Path, seed: int) -> str | None:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return f"importances need at least 2 complete trials ({len(complete)} so far)"
    if len({t.value for t in complete}) == 1:
        return "every complete trial scored the same"
    if not any(len({t.params.get(name) for t in complete}) > 1 for name in complete[0].params):
        return "no parameter varies across the complete trials"
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)  # seeded: the same study, the same figure
    try:
        with _figure_context(optuna):
            axes = optuna.visualization.matplotlib.plot_param_importances(
                study, evaluator=evaluator, target_name="validation macro-F1"
            )
            _save_figure(axes, path)
    except (RuntimeError, ValueError) as err:  # Optuna's refusals (e.g. too few trials sharing a space)
        return str(err).strip().splitlines()[0]
    return None


@contextlib.contextmanager
def _figure_context(optuna):
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the matplotlib plots are "experimental"
        yield


def _save_figure(axes, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure = axes.figure
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def _log_study(mlflow, result: TuneResult) -> None:
    if result.best_value is not None:
        mlflow.log_metric("best_macro_f1", result.best_value)
        mlflow.set_tag("optuna.best_trial", result.best_number)
    for path in result.written:
        mlflow.log_artifact(str(path))


def format_tune_summary(result: TuneResult) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in sorted(result.counts.items())) or "no trials"
    lines = [f"Study {result.study_name!r} ({result.storage}): {counts}; {result.trials_run} run now"]
    if result.best_number is not None:
        lines.append(f"Best trial {result.best_number}: validation macro-F1 {result.best_value:.4f}, run in {result.best_run_dir}/")
        lines.extend(f"  {name} = {value:.4g}" if isinstance(value, float) else f"  {name} = {value}"
                     for name, value in result.best_params.items())
    lines.extend(f"note: {note}" for note in result.notes)
    if result.written:
        lines.append(f"Written to {result.written[0].parent}/: " + ", ".join(path.name for path in result.written))
    if result.best_number is not None:
        best_config = result.written[0]
        lines.append(f"Train the best config again: yelp-lora train --config {best_config} --output-dir DIR")
    return "\n".join(lines)
