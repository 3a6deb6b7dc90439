"""Two adapters scored, paired, on rows of a training file that neither was trained or validated on:
a second, larger check beside the 400 validation rows when choosing between configs, without
touching a test file.

Usage: python benchmarks/heldout_pair.py RUN_A RUN_B [--file TRAIN_FILE] [--per-label 300] [--seed 1000]

TRAIN_FILE defaults to open_dataset_train.csv in the data directory ($YELP_LORA_DATA, else
../shared's). Every row either run drew (training or validation, rebuilt from its run.json and
checked against its fingerprint) is left out; a seeded balanced draw of the rest is scored by both
adapters on torch. Prints each one's accuracy and macro-F1 and McNemar's test between them
(docs/accuracy.md).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from yelp_lora.artifacts import read_run
from yelp_lora.data.mixing import run_training_rows
from yelp_lora.data.sampling import balanced_indices
from yelp_lora.data.sources import load_split, resolve_source
from yelp_lora.inference.predictor import Predictor
from yelp_lora.metrics import headline, mcnemar


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs=2, metavar="RUN")
    parser.add_argument("--file", default=str(Path(resolve_source("auto")) / "open_dataset_train.csv"))
    parser.add_argument("--per-label", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1000)
    args = parser.parse_args()
    if re.search(r"(^|[_.-])test([_.-]|$)", Path(args.file).name.lower()):
        parser.error(f"{args.file}: a test file is for reporting, never for choosing")

    drawn: set[str] = set()
    for run in args.runs:
        train, validation = run_training_rows(read_run(run)[1])
        drawn.update(train.texts, validation.texts)
    rows = load_split(args.file, "train")
    unseen = rows.select([i for i, text in enumerate(rows.texts) if text not in drawn])
    sample = unseen.select(balanced_indices(unseen.labels, args.per_label * 5, args.seed, what="unseen rows"))
    print(f"{args.file}: {len(rows):,} rows, {len(unseen):,} drawn by neither run; "
          f"scoring a balanced {len(sample):,} (seed {args.seed})")

    predictions, macro_f1 = [], []
    for run in args.runs:
        scored = Predictor(run, backend="torch").probabilities(sample.texts, progress=True)
        predictions.append(scored.probabilities.argmax(axis=1))
        scores = headline(sample.labels, predictions[-1])
        macro_f1.append(scores["macro_f1"])
        print(f"{run}: accuracy {scores['accuracy']:.4f}, macro-F1 {scores['macro_f1']:.4f}")
    test = mcnemar(sample.labels, *predictions)
    print(f"McNemar: only {args.runs[0]} right {test['only_first_right']}, only {args.runs[1]} right "
          f"{test['only_second_right']}, p = {test['p_value']:.3g} ({test['method']}); "
          f"macro-F1 second - first: {macro_f1[1] - macro_f1[0]:+.4f}")


if __name__ == "__main__":
    main()
