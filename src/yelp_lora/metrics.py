"""Classification metrics shared by validation, evaluation and reports (scikit-learn's).

Part of the job's definition, like the labels: training selects its epoch by `headline`'s
macro-F1 and evaluation reports the same numbers, so both read them from here. The functions
return plain dicts; the records that carry them across stages are in `artifacts`.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from yelp_lora.config import LABEL_NAMES, NUM_LABELS

LABEL_IDS = list(range(NUM_LABELS))


def headline(labels, predictions) -> dict[str, float]:
    """Accuracy and macro-F1 (the primary metric). Macro-F1 averages the labels present among the
    rows or the predictions, as scikit-learn does by default: a label neither in the sample nor
    predicted has no F1 to average (counted as 0 it would lower the score of every sample that
    lacks it; in a stratified sample every label is present)."""
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, labels=present_labels(labels, predictions), average="macro",
                                   zero_division=0)),
    }


def present_labels(labels, predictions) -> list[int]:
    """The label ids among the rows or the predictions, in order."""
    return [int(label) for label in np.union1d(labels, predictions)]


def detailed(labels, predictions) -> dict:
    """Headline metrics plus per-class precision / recall / F1 / support and the confusion matrix."""
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=LABEL_IDS, zero_division=0
    )
    return {
        **headline(labels, predictions),
        "n": int(len(labels)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(LABEL_NAMES)
        },
        "confusion_matrix": confusion_matrix(labels, predictions, labels=LABEL_IDS).tolist(),
    }


def predictions_of(logits) -> np.ndarray:
    return np.asarray(logits).argmax(axis=-1)


# ---------------------------------------------------------------- ordinal, uncertainty, calibration
# Labels are ordered (stars - 1), so a distance between labels is a distance in stars.

MCNEMAR_EXACT_BELOW = 25  # discordant pairs under which the chi-squared approximation is poor
BOOTSTRAP_LEVEL = 0.95


def _finite(value: float) -> float | None:
    """JSON has no NaN: an undefined score (e.g. kappa of two constant raters) is null."""
    return float(value) if np.isfinite(value) else None


def ordinal(labels, predictions) -> dict[str, float | None]:
    """How wrong in stars: mean absolute error, share within one star, quadratic weighted kappa."""
    from sklearn.metrics import cohen_kappa_score, mean_absolute_error

    labels, predictions = np.asarray(labels), np.asarray(predictions)
    with warnings.catch_warnings():  # undefined kappa (one label in common) is reported as null below
        warnings.simplefilter("ignore")
        kappa = cohen_kappa_score(labels, predictions, labels=LABEL_IDS, weights="quadratic")
    return {
        "mae_stars": float(mean_absolute_error(labels, predictions)),
        "within_one_star": float(np.mean(np.abs(labels - predictions) <= 1)),
        "qwk": _finite(kappa),
    }


def bootstrap_ci(
    labels, predictions, *, resamples: int = 1000, seed: int = 0, level: float = BOOTSTRAP_LEVEL,
    progress: bool = True, desc: str = "Bootstrapping",
) -> dict[str, dict[str, float]]:
    """Percentile bootstrap intervals for accuracy and macro-F1 (reviews resampled with replacement).

    The same seed draws the same resamples, so intervals of models scored on one sample are paired.
    """
    from yelp_lora.util.progress import progress as progress_bar

    labels, predictions = np.asarray(labels), np.asarray(predictions)
    rng = np.random.default_rng(seed)
    draws = {key: np.empty(resamples) for key in ("accuracy", "macro_f1")}
    for i in progress_bar(range(resamples), desc=desc, enabled=progress, unit="resample"):
        index = rng.integers(0, len(labels), len(labels))
        for key, value in headline(labels[index], predictions[index]).items():
            draws[key][i] = value
    tail = (1 - level) / 2 * 100
    point = headline(labels, predictions)
    return {
        key: {"value": point[key], "low": float(np.percentile(d, tail)), "high": float(np.percentile(d, 100 - tail))}
        for key, d in draws.items()
    } | {"level": level, "resamples": resamples, "seed": seed}


def mcnemar(labels, first, second) -> dict:
    """McNemar's paired test: do two models scored on the same reviews differ in accuracy?

    Only the discordant reviews count: `only_first` right where the second is wrong, and the reverse.
    Exact two-sided binomial below MCNEMAR_EXACT_BELOW discordant pairs, else chi-squared with
    continuity correction.
    """
    from scipy.stats import binomtest, chi2

    labels = np.asarray(labels)
    first_right, second_right = np.asarray(first) == labels, np.asarray(second) == labels
    b, c = int(np.sum(first_right & ~second_right)), int(np.sum(~first_right & second_right))
    if b + c == 0:
        method, statistic, p_value = "no discordant pairs", 0.0, 1.0
    elif b + c < MCNEMAR_EXACT_BELOW:
        method, statistic = "exact binomial", float(min(b, c))
        p_value = binomtest(min(b, c), b + c, 0.5).pvalue
    else:
        method, statistic = "chi-squared, continuity-corrected", (abs(b - c) - 1) ** 2 / (b + c)
        p_value = chi2.sf(statistic, df=1)
    return {"only_first_right": b, "only_second_right": c, "statistic": float(statistic),
            "p_value": float(p_value), "method": method}


def calibration(labels, probabilities, bins: int = 10) -> dict:
    """Expected calibration error of the top-class confidence, and the reliability diagram's bins.

    Bins are equal-width and right-closed, (0.1, 0.2] ...; ECE = sum over bins of
    (share of reviews in the bin) * |accuracy - mean confidence|.
    """
    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        accuracy = float(correct[inside].mean()) if count else None
        mean_confidence = float(confidence[inside].mean()) if count else None
        if count:
            ece += count / len(labels) * abs(accuracy - mean_confidence)
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
                     "accuracy": accuracy, "confidence": mean_confidence})
    return {"ece": float(ece), "bins": rows}


def fit_temperature(logits, labels) -> float:
    """The softmax temperature T that minimises the negative log-likelihood of `labels` under
    softmax(logits / T) (Guo et al. 2017): one number, so the predicted labels never change."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if not len(labels) or not np.isfinite(logits).all():
        return 1.0

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=-1)[np.arange(len(labels)), labels].mean())

    # T between 0.05 and 20; the bound keeps a degenerate validation set from a runaway fit.
    log_t = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x
    # Logits that carry no information about T (all equal, or every row right by a huge margin) leave
    # the likelihood flat, and the optimiser's stopping point arbitrary: keep them as they are.
    if not nll(log_t) < nll(0.0) - 1e-9:
        return 1.0
    return float(np.exp(log_t))
