"""Scoring an adapter on held-out reviews, and comparing it with the untuned model it started from."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from yelp_lora import data as data_stage
from yelp_lora import model as model_stage
from yelp_lora.config import LABEL_NAMES
from yelp_lora.metrics import calibration, detailed, headline, mcnemar, ordinal, predictions_of
from yelp_lora.train import ADAPTER_DIRNAME, ADAPTER_META_FILE

EXTREMES = {(0, 4), (4, 0)}


def resolve_adapter_dir(path: str | Path) -> Path:
    """Accept a run directory (holding adapter/) or an adapter directory itself."""
    path = Path(path)
    if (path / ADAPTER_DIRNAME / "adapter_config.json").is_file():
        return path / ADAPTER_DIRNAME
    if (path / "adapter_config.json").is_file():
        return path
    if not path.exists():
        raise model_stage.ModelError(f"adapter not found: {path}")
    raise model_stage.ModelError(f"{path} holds no adapter (no adapter_config.json in it or in {path / ADAPTER_DIRNAME})")


def read_adapter_meta(adapter_dir: Path) -> dict:
    """yelp-lora's notes on the adapter; for a foreign PEFT adapter, what its config implies."""
    meta_file = adapter_dir / ADAPTER_META_FILE
    if meta_file.is_file():
        return json.loads(meta_file.read_text(encoding="utf-8"))
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    base = config["base_model_name_or_path"]
    return {"base_model": base, "base_model_path": base, "head_seed": 42, "max_length": 256, "label_names": list(LABEL_NAMES)}


def load_eval_split(
    meta: dict, source: str | None, split: str, n: int | None, seed: int, skip_bad_rows: bool = False
) -> data_stage.Split:
    """A seeded stratified sample of `split`, from `source` or else the data the adapter was trained on."""
    rows = data_stage.load_split(source or meta.get("data_source", "auto"), split, skip_bad_rows=skip_bad_rows)
    return data_stage.sample_split(rows, n, seed)


def evaluate(
    adapter: str | Path, source: str | None = None, split: str = "test", n: int | None = None, seed: int = 42,
    skip_bad_rows: bool = False, batch_size: int = 64,
) -> dict:
    adapter_dir = resolve_adapter_dir(adapter)
    meta = read_adapter_meta(adapter_dir)
    rows = load_eval_split(meta, source, split, n, seed, skip_bad_rows)
    model, tokenizer = model_stage.load_adapter(adapter_dir)
    logits, _ = model_stage.predict_logits(
        model, tokenizer, rows.texts, max_length=meta["max_length"], batch_size=batch_size, progress=True, desc="Evaluating"
    )
    return {
        "adapter": str(adapter_dir),
        "data": rows.summary(),
        "split": split,
        "seed": seed,
        **detailed(rows.labels, predictions_of(logits)),
    }


def label_shift(baseline: np.ndarray, adapter: np.ndarray) -> tuple[list[dict], int]:
    """Counted (baseline label -> adapter label) moves where the two disagree, most frequent first."""
    moves = Counter((int(b), int(a)) for b, a in zip(baseline, adapter) if b != a)
    ordered = sorted(moves.items(), key=lambda item: (-item[1], item[0]))
    table = [{"from": LABEL_NAMES[b], "to": LABEL_NAMES[a], "count": count} for (b, a), count in ordered]
    reversals = sum(count for move, count in moves.items() if move in EXTREMES)
    return table, reversals


@dataclass
class ScoredSample:
    """One test sample scored by every model: what compare's JSON summarises and a report draws."""

    adapter_dir: Path
    rows: data_stage.Split
    seed: int
    probabilities: dict[str, np.ndarray]  # model name -> [n, 5], in the order of rows
    classical: dict | None = None  # how the classical baseline was fitted, when it was

    def predictions(self, name: str) -> np.ndarray:
        return predictions_of(self.probabilities[name])


def score_test_sample(
    adapter: str | Path, source: str | None = None, n: int = 500, seed: int = 42, skip_bad_rows: bool = False,
    batch_size: int = 64, with_classical: bool = False,
) -> ScoredSample:
    """The untuned baseline (same base, same seeded head), the adapter and optionally the classical
    baseline, on one seeded test sample."""
    adapter_dir = resolve_adapter_dir(adapter)
    meta = read_adapter_meta(adapter_dir)
    rows = load_eval_split(meta, source, "test", n, seed, skip_bad_rows)
    adapted, tokenizer = model_stage.load_adapter(adapter_dir)
    baseline = model_stage.build_classifier(meta["base_model_path"], meta["head_seed"]).eval()
    probabilities = {}
    for name, model in (("baseline", baseline), ("lora", adapted)):
        logits, _ = model_stage.predict_logits(
            model, tokenizer, rows.texts, max_length=meta["max_length"], batch_size=batch_size, progress=True,
            desc=f"Scoring {name}",
        )
        probabilities[name] = model_stage.softmax(logits)
    scored = ScoredSample(adapter_dir, rows, seed, probabilities)
    if with_classical:
        from yelp_lora.classical import fit_classical

        fitted = fit_classical(adapter_dir)
        probabilities["classical"] = fitted.probabilities(rows.texts)
        scored.classical = fitted.summary
    return scored


def compare_result(scored: ScoredSample) -> dict:
    rows = scored.rows
    predictions = {name: scored.predictions(name) for name in scored.probabilities}
    scores = {name: headline(rows.labels, preds) for name, preds in predictions.items()}
    shift, reversals = label_shift(predictions["baseline"], predictions["lora"])
    result = {
        "n": len(rows),
        "seed": scored.seed,
        "adapter": str(scored.adapter_dir),
        "data": rows.summary(),
        **scores,
        "gain": {key: scores["lora"][key] - scores["baseline"][key] for key in ("accuracy", "macro_f1")},
        "label_shift": shift,
        "extreme_reversals": reversals,
        "ordinal": {name: ordinal(rows.labels, preds) for name, preds in predictions.items()},
        "ece": {name: calibration(rows.labels, p)["ece"] for name, p in scored.probabilities.items()},
        "mcnemar": {
            f"lora_vs_{other}": mcnemar(rows.labels, predictions["lora"], predictions[other])
            for other in predictions if other != "lora"
        },
        "detailed": {name: detailed(rows.labels, preds) for name, preds in predictions.items()},
    }
    if scored.classical:
        result["classical_fit"] = scored.classical
    return result


def compare(
    adapter: str | Path, source: str | None = None, n: int = 500, seed: int = 42, skip_bad_rows: bool = False,
    batch_size: int = 64, with_classical: bool = False,
) -> dict:
    """The untuned baseline (same base, same seeded head) against the adapter on one test sample."""
    return compare_result(score_test_sample(adapter, source, n, seed, skip_bad_rows, batch_size, with_classical))


def format_compare(result: dict) -> str:
    base, lora, gain = result["baseline"], result["lora"], result["gain"]
    lines = [
        f"===== Evaluation Results (Yelp Test, N={result['n']}) =====",
        f"Baseline Accuracy : {base['accuracy']:.4f}",
        f"LoRA Accuracy     : {lora['accuracy']:.4f}",
        "",
        f"Baseline Macro-F1 : {base['macro_f1']:.4f}",
        f"LoRA Macro-F1     : {lora['macro_f1']:.4f}",
        "",
        "===== Summary =====",
        f"Accuracy Gain     : {gain['accuracy']:+.4f}",
        f"Macro-F1 Gain     : {gain['macro_f1']:+.4f}",
        "",
        "===== Label Shift (baseline → LoRA) =====",
    ]
    lines += [f"{row['from']} → {row['to']} : {row['count']}" for row in result["label_shift"]] or ["(no changes)"]
    lines += ["", f"Extreme reversals (strong_positive ↔ strong_negative): {result['extreme_reversals']}"]
    if "classical" in result:
        classical = result["classical"]
        lines += [
            "",
            "===== Classical Baseline (TF-IDF 1-2 grams + logistic regression, same training rows) =====",
            f"Classical Accuracy: {classical['accuracy']:.4f}",
            f"Classical Macro-F1: {classical['macro_f1']:.4f}",
            f"LoRA − Classical  : accuracy {lora['accuracy'] - classical['accuracy']:+.4f}, "
            f"macro-F1 {lora['macro_f1'] - classical['macro_f1']:+.4f}",
        ]
    lines += ["", "===== Ordinal (stars) =====", f"{'':<10} {'MAE':>6} {'within-1':>9} {'QWK':>7} {'ECE':>7}"]
    for name, scores in result["ordinal"].items():
        qwk = "n/a" if scores["qwk"] is None else f"{scores['qwk']:.4f}"
        lines.append(
            f"{name:<10} {scores['mae_stars']:>6.3f} {scores['within_one_star']:>9.4f} {qwk:>7} {result['ece'][name]:>7.4f}"
        )
    lines += ["", "===== McNemar (paired, same reviews) ====="]
    for pair, test in result["mcnemar"].items():
        lines.append(
            f"{pair}: LoRA alone right {test['only_first_right']}, other alone right {test['only_second_right']}, "
            f"p = {test['p_value']:.4g} ({test['method']})"
        )
    return "\n".join(lines)
