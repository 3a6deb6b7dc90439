"""Which attention should the int8 ONNX graph use on this CPU? ONNX Runtime's QAttention ("fused")
against int8 query/key/value matmuls and ONNX's standard Attention node ("standard"), timed side by
side in alternating rounds on the same train.csv reviews, as `predict --backend onnx-int8` runs them
(one review per pass, a one-thread session per core).

Usage: python benchmarks/int8_attention.py [--adapter runs/demo] [--rows 400] [--rounds 6] [--json FILE]

`auto` takes the standard form on AMX CPUs, where this measured it 4-8% faster, and QAttention
elsewhere until measured (`modeling.hardware.int8_attention`); this script is that measurement.
Both forms must give the same answers: it prints the largest probability difference between them
and the predicted classes that differ. Rows come from train.csv, never test.csv.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from yelp_lora.bench.peaks import instruction_sets
from yelp_lora.data.sources import load_split
from yelp_lora.inference.predictor import Predictor
from yelp_lora.modeling.hardware import INT8_ATTENTION_ENV, INT8_ATTENTION_FORMS, int8_attention
from yelp_lora.util.provenance import environment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", default="runs/demo", help="run or adapter directory")
    parser.add_argument("--rows", type=int, default=400, help="train.csv reviews predicted each round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the figures, the machine and the command to this file")
    args = parser.parse_args()

    texts = load_split("auto", "train").texts
    texts = [texts[i] for i in np.random.default_rng(args.seed).permutation(len(texts))[: args.rows]]
    chosen = int8_attention()  # before the forms are forced below
    predictors = {}
    for form in INT8_ATTENTION_FORMS:  # each exported once (cached), then loaded
        os.environ[INT8_ATTENTION_ENV] = form
        predictors[form] = Predictor(args.adapter, backend="onnx-int8")
        predictors[form].probabilities(texts[:8])  # the sessions' first runs
    del os.environ[INT8_ATTENTION_ENV]

    rates: dict[str, list[float]] = {form: [] for form in predictors}
    probabilities = {}
    for round_ in range(args.rounds):
        for form in INT8_ATTENTION_FORMS if round_ % 2 == 0 else reversed(INT8_ATTENTION_FORMS):
            started = time.perf_counter()
            probabilities[form] = predictors[form].probabilities(texts).probabilities
            rates[form].append(len(texts) / (time.perf_counter() - started))
        print(f"round {round_ + 1} of {args.rounds}: " + ", ".join(f"{form} {rates[form][-1]:.1f}" for form in rates),
              flush=True)

    fused, standard = (probabilities[form] for form in INT8_ATTENTION_FORMS)
    medians = {form: statistics.median(values) for form, values in rates.items()}
    print(f"\n{len(texts)} train.csv reviews, {args.rounds} rounds; auto here: {chosen.value} ({chosen.why})")
    for form, values in rates.items():
        print(f"  {form:9s} {medians[form]:7.1f} samples/s (median)   rounds: " + " ".join(f"{r:.1f}" for r in values))
    print(f"  standard / fused: {medians['standard'] / medians['fused']:.3f}; largest probability difference "
          f"{np.abs(standard - fused).max():.2e}, classes that differ: {int((standard.argmax(1) != fused.argmax(1)).sum())}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": shlex.join([sys.executable, *sys.argv]),
            "environment": environment(),
            "instruction_sets": instruction_sets(),
            "auto": chosen._asdict(),
            "rows": len(texts),
            "samples_per_s": {form: round(medians[form], 2) for form in rates},
            "rounds": {form: [round(r, 1) for r in values] for form, values in rates.items()},
            "max_abs_probability_difference": float(np.abs(standard - fused).max()),
            "classes_that_differ": int((standard.argmax(1) != fused.argmax(1)).sum()),
        }, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
