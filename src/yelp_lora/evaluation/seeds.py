"""Seeds are not luck: one config trained over consecutive seeds, each run compared on the same
test sample, summarised as mean ± standard deviation (sample std, n-1) across seeds.

The seed moves everything it moves in a single run: which rows are drawn for training and
validation, the classifier head's initial weights, LoRA's initialisation and the batch order.
It trains and then evaluates, so it lives above both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from yelp_lora.artifacts import CHECKPOINT_DIRNAME, RUN_FILE, CompareResult, EpochScore, Record, finished_run, write_record
from yelp_lora.config import EvalSettings, RunConfig
from yelp_lora.data.sources import resolve_source
from yelp_lora.errors import ConfigError
from yelp_lora.evaluation.evaluate import compare
from yelp_lora.training.recipe import format_run_summary, interrupted_checkpoints, refuse_registry_version, train

SWEEP_FILE = "sweep.json"
# (name in sweep.json, how to read it from a compare result)
METRICS = {
    "lora_accuracy": lambda r: r.lora.accuracy,
    "lora_macro_f1": lambda r: r.lora.macro_f1,
    "lora_mae_stars": lambda r: r.ordinal["lora"].mae_stars,
    "lora_within_one_star": lambda r: r.ordinal["lora"].within_one_star,
    "lora_qwk": lambda r: r.ordinal["lora"].qwk,
    "lora_ece": lambda r: r.ece["lora"],
    "baseline_accuracy": lambda r: r.baseline.accuracy,
    "baseline_macro_f1": lambda r: r.baseline.macro_f1,
    "gain_accuracy": lambda r: r.gain.accuracy,
    "gain_macro_f1": lambda r: r.gain.macro_f1,
}


class Spread(Record):
    mean: float | None
    std: float | None
    values: list[float | None]


class SeedRun(Record):
    """One seed's run and its test figures (one field per METRICS name)."""

    seed: int
    run_dir: str
    best_epoch: EpochScore | None
    lora_accuracy: float
    lora_macro_f1: float
    lora_mae_stars: float
    lora_within_one_star: float
    lora_qwk: float | None
    lora_ece: float
    baseline_accuracy: float
    baseline_macro_f1: float
    gain_accuracy: float
    gain_macro_f1: float


class TestSample(Record):
    n: int
    seed: int


class SweepSummary(Record):
    """sweep.json."""

    seeds: list[int]
    test_sample: TestSample
    config: RunConfig
    metrics: dict[str, Spread]
    runs: list[SeedRun]


def mean_std(values: list[float | None]) -> Spread:
    present = [v for v in values if v is not None]
    return Spread(
        mean=float(np.mean(present)) if present else None,
        std=float(np.std(present, ddof=1)) if len(present) > 1 else None,  # one value has no sample spread
        values=values,
    )


def read_metrics(result: CompareResult) -> dict[str, float | None]:
    return {name: read(result) for name, read in METRICS.items()}


def sweep(config: RunConfig, output_dir: str | Path, seeds: int, settings: EvalSettings, *, overwrite: bool = False) -> SweepSummary:
    """Train seeds config.train.seed … +seeds-1 into OUTPUT/seed-S/, compare each, write OUTPUT/sweep.json;
    a seed already trained with this config is reused, one trained with another replaced only if `overwrite`."""
    output_dir = Path(output_dir)
    refuse_registry_version(output_dir)
    source = resolve_source(config.data.source)
    if Path(source).is_file():  # each seed is compared on the test split, which one file does not have
        raise ConfigError(f"--seeds compares every seed on the data's test split, and {source} is one file: "
                          "name a directory with train and test files, or a hub data set")
    first = config.train.seed
    runs = []
    for seed in range(first, first + seeds):
        seed_config = config.model_copy(update={"train": config.train.model_copy(update={"seed": seed})})
        run_dir = output_dir / f"seed-{seed}"
        print(f"===== seed {seed} ({seed - first + 1}/{seeds}) → {run_dir} =====", flush=True)
        record = finished_run(run_dir, seed_config)
        if record:
            print(f"already trained with this config: reusing {run_dir / RUN_FILE}", flush=True)
        else:
            # A seed interrupted after a checkpoint (with --save-steps) continues from it.
            checkpoints = run_dir / CHECKPOINT_DIRNAME
            resume = bool(interrupted_checkpoints(run_dir))
            if resume:
                print(f"resuming from its checkpoint in {checkpoints}", flush=True)
            try:
                record = train(seed_config, run_dir, resume=resume, overwrite=overwrite)
            except ConfigError as err:
                if not resume:
                    raise
                raise ConfigError(f"seed {seed}: {err}; delete {checkpoints} to train this seed afresh") from None
            print(format_run_summary(record), flush=True)
        result = compare(run_dir, settings)
        runs.append(SeedRun(seed=seed, run_dir=str(run_dir), best_epoch=record.best_epoch, **read_metrics(result)))
    summary = SweepSummary(
        seeds=[run.seed for run in runs],
        test_sample=TestSample(n=settings.n, seed=settings.seed),
        config=config,
        metrics={name: mean_std([getattr(run, name) for run in runs]) for name in METRICS},
        runs=runs,
    )
    write_record(output_dir / SWEEP_FILE, summary)
    return summary


def format_sweep(summary: SweepSummary) -> str:
    lines = [f"===== Seeds {', '.join(map(str, summary.seeds))}: test sample N={summary.test_sample.n}, mean ± std ====="]
    for name, stats in summary.metrics.items():
        if stats.mean is None:
            lines.append(f"{name:<22} n/a")
        else:
            spread = f"± {stats.std:.4f}" if stats.std is not None else "± n/a "
            lines.append(f"{name:<22} {stats.mean:.4f} {spread}   ("
                         + ", ".join("n/a" if v is None else f"{v:.4f}" for v in stats.values) + ")")
    return "\n".join(lines)
