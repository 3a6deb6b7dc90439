"""The cheap classical answer: TF-IDF word 1-2 grams with logistic regression (scikit-learn).

It is trained on exactly the rows the adapter was trained on, rebuilt from the run's run.json
(same sources, seed and sample sizes through data.mixing, extra training sources included) and checked against the
fingerprint recorded there; its regularisation strength is chosen on the run's validation rows,
as the adapter's best epoch was. The test split is never used to fit or choose anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from yelp_lora.artifacts import ClassicalFit, Headline, read_run
from yelp_lora.config import NUM_LABELS
from yelp_lora.data.mixing import run_training_rows
from yelp_lora.metrics import headline

# Inverse regularisation strengths tried on the validation rows (ties go to the stronger regularisation).
C_GRID = (0.5, 2.0, 8.0, 32.0)


@dataclass
class FittedClassical:
    pipeline: object
    summary: ClassicalFit

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """[n, 5] class probabilities; a label absent from the training rows gets probability 0."""
        out = np.zeros((len(texts), NUM_LABELS))
        out[:, self.pipeline.classes_] = self.pipeline.predict_proba(texts)
        return out


def _pipeline(c: float):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, strip_accents="unicode"),
        LogisticRegression(C=c, max_iter=2000),
    )


def fit_classical(run_or_adapter: str | Path) -> FittedClassical:
    """Fit on the run's training rows; choose C by validation macro-F1."""
    from yelp_lora.util.progress import progress

    run_dir, record = read_run(run_or_adapter)
    train, validation = run_training_rows(record)
    validation_scores = {}
    fitted = {}
    for c in progress(C_GRID, desc="Fitting TF-IDF + logistic regression", unit="C"):
        fitted[c] = _pipeline(c).fit(train.texts, train.labels)
        validation_scores[c] = headline(validation.labels, fitted[c].predict(validation.texts))
    best = max(C_GRID, key=lambda c: (validation_scores[c]["macro_f1"], -c))
    return FittedClassical(
        fitted[best],
        ClassicalFit(
            model="TF-IDF word 1-2 grams (sublinear tf) + multinomial logistic regression",
            run=str(run_dir),
            train_rows=len(train),
            train_fingerprint=train.fingerprint(),
            C=best,
            validation={str(c): Headline(**scores) for c, scores in validation_scores.items()},
        ),
    )
