"""Seeds are not luck: one config trained over consecutive seeds, each run compared on the same
test sample, summarised as mean ± standard deviation (sample std, n-1) across seeds.

The seed moves everything it moves in a single run: which rows are drawn for training and
validation, the classifier head's initial weights, LoRA's initialisation and the batch order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from yelp_lora.atomic import atomic_write_text
from yelp_lora.config import RunConfig
from yelp_lora.evaluate import compare
from yelp_lora.train import RUN_FILE, format_summary, train

SWEEP_FILE = "sweep.json"
# (name in sweep.json, how to read it from a compare result)
METRICS = {
    "lora_accuracy": lambda r: r["lora"]["accuracy"],
    "lora_macro_f1": lambda r: r["lora"]["macro_f1"],
    "lora_mae_stars": lambda r: r["ordinal"]["lora"]["mae_stars"],
    "lora_within_one_star": lambda r: r["ordinal"]["lora"]["within_one_star"],
    "lora_qwk": lambda r: r["ordinal"]["lora"]["qwk"],
    "lora_ece": lambda r: r["ece"]["lora"],
    "baseline_accuracy": lambda r: r["baseline"]["accuracy"],
    "baseline_macro_f1": lambda r: r["baseline"]["macro_f1"],
    "gain_accuracy": lambda r: r["gain"]["accuracy"],
    "gain_macro_f1": lambda r: r["gain"]["macro_f1"],
}


def finished_run(run_dir: Path, config: RunConfig) -> dict | None:
    """The run record of an earlier, complete run of exactly this config (so a sweep can be rerun to finish)."""
    try:
        record = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("config") == config.model_dump(mode="json") else None


def mean_std(values: list[float | None]) -> dict:
    present = [v for v in values if v is not None]
    return {
        "mean": float(np.mean(present)) if present else None,
        "std": float(np.std(present, ddof=1)) if len(present) > 1 else 0.0 if present else None,
        "values": values,
    }


def sweep(config: RunConfig, output_dir: str | Path, seeds: int, n: int = 500, test_seed: int = 42,
          batch_size: int = 64) -> dict:
    """Train seeds config.train.seed … +seeds-1 into OUTPUT/seed-S/, compare each, write OUTPUT/sweep.json."""
    output_dir = Path(output_dir)
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
            record = train(seed_config, run_dir)
            print(format_summary(record), flush=True)
        result = compare(run_dir, n=n, seed=test_seed, batch_size=batch_size)
        runs.append({"seed": seed, "run_dir": str(run_dir), "best_epoch": record["best_epoch"],
                     **{name: read(result) for name, read in METRICS.items()}})
    summary = {
        "seeds": [run["seed"] for run in runs],
        "test_sample": {"n": n, "seed": test_seed},
        "config": config.model_dump(mode="json"),
        "metrics": {name: mean_std([run[name] for run in runs]) for name in METRICS},
        "runs": runs,
    }
    atomic_write_text(output_dir / SWEEP_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


def format_sweep(summary: dict) -> str:
    seeds = summary["seeds"]
    lines = [f"===== Seeds {', '.join(map(str, seeds))}: test sample N={summary['test_sample']['n']}, mean ± std ====="]
    for name, stats in summary["metrics"].items():
        if stats["mean"] is None:
            lines.append(f"{name:<22} n/a")
        else:
            lines.append(f"{name:<22} {stats['mean']:.4f} ± {stats['std']:.4f}   ("
                         + ", ".join("n/a" if v is None else f"{v:.4f}" for v in stats["values"]) + ")")
    return "\n".join(lines)
