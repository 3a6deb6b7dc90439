"""Classification metrics shared by validation, evaluation and reports (scikit-learn's)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from yelp_lora.config import LABEL_NAMES, NUM_LABELS

LABEL_IDS = list(range(NUM_LABELS))


def headline(labels, predictions) -> dict[str, float]:
    """Accuracy and macro-F1 (the primary metric), over all five labels."""
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, labels=LABEL_IDS, average="macro", zero_division=0)),
    }


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


def format_detailed(result: dict) -> str:
    lines = [
        f"Accuracy : {result['accuracy']:.4f}",
        f"Macro-F1 : {result['macro_f1']:.4f}",
        "",
        f"{'label':<16} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}",
    ]
    for name, row in result["per_class"].items():
        lines.append(f"{name:<16} {row['precision']:>9.4f} {row['recall']:>9.4f} {row['f1']:>9.4f} {row['support']:>8}")
    lines += ["", "Confusion matrix (rows: true, columns: predicted)", " " * 16 + "".join(f"{i:>6}" for i in LABEL_IDS)]
    for name, row in zip(LABEL_NAMES, result["confusion_matrix"]):
        lines.append(f"{name:<16}" + "".join(f"{count:>6}" for count in row))
    return "\n".join(lines)


def predictions_of(logits) -> np.ndarray:
    return np.asarray(logits).argmax(axis=-1)
