"""Scoring an adapter on held-out reviews, and comparing it with the untuned model it started from."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from yelp_lora.artifacts import (
    ADAPTER_WEIGHTS,
    AdapterMeta,
    ClassicalFit,
    ClassScore,
    CompareResult,
    Detailed,
    Headline,
    LabelMove,
    LengthGroup,
    LongReviews,
    McNemar,
    Ordinal,
    Record,
    SplitSummary,
    TemperatureScaling,
    read_adapter_meta,
    read_run,
    resolve_adapter_dir,
)
from yelp_lora.config import LABEL_NAMES, EvalSettings
from yelp_lora.data.mixing import looks_like_test
from yelp_lora.data.rows import Split
from yelp_lora.data.sampling import sample_split
from yelp_lora.data.sources import load_split
from yelp_lora.errors import DataError
from yelp_lora.metrics import calibration, detailed, headline, mcnemar, ordinal, predictions_of
from yelp_lora.modeling.base import build_classifier, load_adapter
from yelp_lora.modeling.forward import predict_logits, softmax
from yelp_lora.util.hashing import file_sha256

EXTREMES = {(0, 4), (4, 0)}
log = logging.getLogger(__name__)


class EvaluationResult(Record):
    """What `evaluate --json` writes: one adapter's detailed scores (as in `Detailed`) on one sample."""

    adapter: str
    data: SplitSummary
    split: str
    seed: int
    accuracy: float
    macro_f1: float
    n: int
    per_class: dict[str, ClassScore]
    confusion_matrix: list[list[int]]


def load_eval_split(adapter_dir: Path, meta: AdapterMeta, settings: EvalSettings) -> Split:
    """A seeded stratified sample of the settings' split, from their source or else the adapter's training data."""
    trained_on = meta.data_source or "auto"
    if settings.data is None and settings.split == "test" and Path(trained_on).is_file():
        raise DataError(f"the adapter was trained on one file, {trained_on}, which holds no test rows apart from its "
                        "training rows: pass --data with held-out reviews")
    rows = load_split(settings.data or trained_on, settings.split, skip_bad_rows=settings.skip_bad_rows)
    if _learnt_from(adapter_dir, rows.source):
        log.warning("note: %s is a file the adapter was trained or validated on (its run.json says so): these scores "
                    "are not held-out", rows.source)
    return sample_split(rows, settings.n, settings.seed)


def _learnt_from(adapter_dir: Path, source: str) -> bool:
    """Whether `source` is a file the run recorded as one of its training or validation sources."""
    if not Path(source).is_file():
        return False
    try:
        data = read_run(adapter_dir)[1].data
    except DataError:  # no run.json (a foreign adapter), or a damaged one: it says nothing either way
        return False
    used = [entry.source for entry in data.sources] + [data.validation.source]
    return any(Path(path).is_file() and Path(path).resolve() == Path(source).resolve() for path in used)


def evaluate(adapter: str | Path, settings: EvalSettings) -> EvaluationResult:
    adapter_dir = resolve_adapter_dir(adapter)
    meta = read_adapter_meta(adapter_dir)
    rows = load_eval_split(adapter_dir, meta, settings)
    model, tokenizer = load_adapter(adapter_dir)
    logits, _ = predict_logits(
        model, tokenizer, rows.texts, max_length=meta.max_length, head=meta.kept_head, batch_size=settings.batch_size, progress=True,
        desc="Evaluating",
    )
    return EvaluationResult(
        adapter=str(adapter_dir), data=rows.summary(), split=settings.split, seed=settings.seed,
        **detailed(rows.labels, predictions_of(logits)),
    )


def label_shift(baseline: np.ndarray, adapter: np.ndarray) -> tuple[list[LabelMove], int]:
    """Counted (baseline label -> adapter label) moves where the two disagree, most frequent first."""
    moves = Counter((int(b), int(a)) for b, a in zip(baseline, adapter) if b != a)
    ordered = sorted(moves.items(), key=lambda item: (-item[1], item[0]))
    table = [LabelMove(source=LABEL_NAMES[b], target=LABEL_NAMES[a], count=count) for (b, a), count in ordered]
    reversals = sum(count for move, count in moves.items() if move in EXTREMES)
    return table, reversals


@dataclass
class ScoredSample:
    """One test sample scored by every model: what compare's JSON summarises and a report draws."""

    adapter_dir: Path
    meta: AdapterMeta
    rows: Split
    seed: int
    # Model name -> [n, 5], in the order of rows; the adapter's after its temperature, as predict gives them.
    probabilities: dict[str, np.ndarray]
    lora_raw: np.ndarray  # the adapter's softmax(logits), before its temperature
    long: np.ndarray  # [n] bool: the review is longer than the adapter's max_length (its input was cut)
    classical: ClassicalFit | None = None  # how the classical baseline was fitted, when it was

    def predictions(self, name: str) -> np.ndarray:
        return predictions_of(self.probabilities[name])


def score_test_sample(adapter: str | Path, settings: EvalSettings) -> ScoredSample:
    """The untuned baseline (same base, same seeded head), the adapter and optionally the classical
    baseline, on one seeded test sample."""
    adapter_dir = resolve_adapter_dir(adapter)
    meta = read_adapter_meta(adapter_dir)
    rows = load_eval_split(adapter_dir, meta, settings.model_copy(update={"split": "test"}))
    adapted, tokenizer = load_adapter(adapter_dir)
    baseline = build_classifier(meta.base_model_path, meta.head_seed).eval()
    logits = {}
    for name, model in (("baseline", baseline), ("lora", adapted)):
        # Both read the same ids (one tokenizer), so the reviews cut are the same for both.
        logits[name], long = predict_logits(
            model, tokenizer, rows.texts, max_length=meta.max_length, head=meta.kept_head, batch_size=settings.batch_size, progress=True,
            desc=f"Scoring {name}",
        )
    # The temperature was fitted for the adapter; the untuned baseline has none.
    probabilities = {"baseline": softmax(logits["baseline"]), "lora": softmax(logits["lora"], meta.temperature)}
    scored = ScoredSample(
        adapter_dir=adapter_dir, meta=meta, rows=rows, seed=settings.seed, probabilities=probabilities,
        lora_raw=softmax(logits["lora"]), long=long,
    )
    if settings.with_classical:
        from yelp_lora.evaluation.classical import fit_classical

        fitted = fit_classical(adapter_dir)
        probabilities["classical"] = fitted.probabilities(rows.texts)
        scored.classical = fitted.summary
    return scored


def compare_result(scored: ScoredSample) -> CompareResult:
    rows = scored.rows
    predictions = {name: scored.predictions(name) for name in scored.probabilities}
    scores = {name: Headline(**headline(rows.labels, preds)) for name, preds in predictions.items()}
    shift, reversals = label_shift(predictions["baseline"], predictions["lora"])
    ece = {name: calibration(rows.labels, p)["ece"] for name, p in scored.probabilities.items()}
    return CompareResult(
        n=len(rows),
        seed=scored.seed,
        adapter=str(scored.adapter_dir),
        adapter_sha256=file_sha256(scored.adapter_dir / ADAPTER_WEIGHTS),
        data=rows.summary(),
        **scores,
        gain=Headline(**{key: getattr(scores["lora"], key) - getattr(scores["baseline"], key) for key in Headline.model_fields}),
        label_shift=shift,
        extreme_reversals=reversals,
        ordinal={name: Ordinal(**ordinal(rows.labels, preds)) for name, preds in predictions.items()},
        ece=ece,
        mcnemar={
            f"lora_vs_{other}": McNemar(**mcnemar(rows.labels, predictions["lora"], predictions[other]))
            for other in predictions if other != "lora"
        },
        detailed={name: Detailed(**detailed(rows.labels, preds)) for name, preds in predictions.items()},
        classical_fit=scored.classical,
        temperature_scaling=TemperatureScaling(
            temperature=scored.meta.temperature,
            ece_raw=calibration(rows.labels, scored.lora_raw)["ece"],
            ece_calibrated=ece["lora"],
        ),
        long_reviews=LongReviews(
            max_length=scored.meta.max_length, truncation=scored.meta.truncation,
            long=length_group(rows.labels, predictions, scored.long), short=length_group(rows.labels, predictions, ~scored.long),
        ),
    )


def length_group(labels: list[int], predictions: dict[str, np.ndarray], members: np.ndarray) -> LengthGroup:
    """Each model's headline scores on the reviews where `members` is true (none when there are none)."""
    labels = np.asarray(labels)[members]
    if not len(labels):
        return LengthGroup(n=0)
    return LengthGroup(n=len(labels), scores={name: Headline(**headline(labels, preds[members])) for name, preds in predictions.items()})


def compare(adapter: str | Path, settings: EvalSettings) -> CompareResult:
    """The untuned baseline (same base, same seeded head) against the adapter on one test sample."""
    return compare_result(score_test_sample(adapter, settings))


def _sample_name(data: SplitSummary) -> str:
    """'Yelp Test' for a test split, as the reference printed it; otherwise the file the rows came from."""
    return "Yelp Test" if looks_like_test(Path(data.source)) else data.source


def format_compare(result: CompareResult) -> str:
    base, lora, gain = result.baseline, result.lora, result.gain
    lines = [
        f"===== Evaluation Results ({_sample_name(result.data)}, N={result.n}) =====",
        f"Baseline Accuracy : {base.accuracy:.4f}",
        f"LoRA Accuracy     : {lora.accuracy:.4f}",
        "",
        f"Baseline Macro-F1 : {base.macro_f1:.4f}",
        f"LoRA Macro-F1     : {lora.macro_f1:.4f}",
        "",
        "===== Summary =====",
        f"Accuracy Gain     : {gain.accuracy:+.4f}",
        f"Macro-F1 Gain     : {gain.macro_f1:+.4f}",
        "",
        "===== Label Shift (baseline → LoRA) =====",
    ]
    lines += [f"{move.source} → {move.target} : {move.count}" for move in result.label_shift] or ["(no changes)"]
    lines += ["", f"Extreme reversals (strong_positive ↔ strong_negative): {result.extreme_reversals}"]
    if result.classical is not None:
        classical = result.classical
        lines += [
            "",
            "===== Classical Baseline (TF-IDF 1-2 grams + logistic regression, same training rows) =====",
            f"Classical Accuracy: {classical.accuracy:.4f}",
            f"Classical Macro-F1: {classical.macro_f1:.4f}",
            f"LoRA − Classical  : accuracy {lora.accuracy - classical.accuracy:+.4f}, "
            f"macro-F1 {lora.macro_f1 - classical.macro_f1:+.4f}",
        ]
    lines += ["", "===== Ordinal (stars) =====", f"{'':<10} {'MAE':>6} {'within-1':>9} {'QWK':>7} {'ECE':>7}"]
    for name, scores in result.ordinal.items():
        qwk = "n/a" if scores.qwk is None else f"{scores.qwk:.4f}"
        lines.append(
            f"{name:<10} {scores.mae_stars:>6.3f} {scores.within_one_star:>9.4f} {qwk:>7} {result.ece[name]:>7.4f}"
        )
    lines += ["", "===== McNemar (paired, same reviews) ====="]
    for pair, test in result.mcnemar.items():
        lines.append(
            f"{pair}: LoRA alone right {test.only_first_right}, other alone right {test.only_second_right}, "
            f"p = {test.p_value:.4g} ({test.method})"
        )
    if result.temperature_scaling is not None:
        scaling = result.temperature_scaling
        fitted = (f"softmax(logits / {scaling.temperature:.4g}), fitted on validation" if scaling.temperature != 1 else
                  "no temperature: trained with --no-calibrate, or before temperatures were fitted")
        lines += [
            "",
            f"===== Temperature Scaling (LoRA: {fitted}) =====",
            f"LoRA ECE raw       : {scaling.ece_raw:.4f}",
            f"LoRA ECE calibrated: {scaling.ece_calibrated:.4f} (the LoRA ECE above; labels unchanged)",
        ]
    if result.long_reviews is not None:
        lines += ["", *format_long_reviews(result.long_reviews, result.n)]
    return "\n".join(lines)


def format_long_reviews(split: LongReviews, n: int) -> list[str]:
    long, short = split.long, split.short
    lines = [
        f"===== Long Reviews (over {split.max_length} tokens; truncation {split.truncation}) =====",
        f"{long.n} of {n} test reviews are longer than the adapter's {split.max_length} tokens; {short.n} fit.",
        f"{'':<10} {'long acc':>9} {'long F1':>8} {'rest acc':>9} {'rest F1':>8}",
    ]
    for name in {**long.scores, **short.scores}:
        cells = [
            f"{getattr(group.scores[name], key):.4f}" if name in group.scores else "n/a"
            for group in (long, short) for key in ("accuracy", "macro_f1")
        ]
        lines.append(f"{name:<10} {cells[0]:>9} {cells[1]:>8} {cells[2]:>9} {cells[3]:>8}")
    return lines


def format_detailed(result: Detailed | EvaluationResult) -> str:
    ids = range(len(LABEL_NAMES))
    predicted = [sum(column) for column in zip(*result.confusion_matrix)]
    present = [name for name, row, count in zip(LABEL_NAMES, result.per_class.values(), predicted) if row.support or count]
    lines = [
        f"Accuracy : {result.accuracy:.4f}",
        f"Macro-F1 : {result.macro_f1:.4f}"
        + (f" (over the {len(present)} labels among the rows or the predictions: {', '.join(present)})"
           if len(present) < len(LABEL_NAMES) else ""),
        "",
        f"{'label':<16} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}",
    ]
    for name, row in result.per_class.items():
        lines.append(f"{name:<16} {row.precision:>9.4f} {row.recall:>9.4f} {row.f1:>9.4f} {row.support:>8}")
    lines += ["", "Confusion matrix (rows: true, columns: predicted)", " " * 16 + "".join(f"{i:>6}" for i in ids)]
    for name, row in zip(LABEL_NAMES, result.confusion_matrix):
        lines.append(f"{name:<16}" + "".join(f"{count:>6}" for count in row))
    return "\n".join(lines)
