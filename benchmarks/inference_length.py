"""Does an adapter read long reviews better when it is given more tokens at prediction time than it
was trained on? Its own validation rows (rebuilt from run.json; never a test file), scored on torch
with the recorded cut at each length asked for, then with `--long-text chunk` at the trained length.

Usage: python benchmarks/inference_length.py RUN [--lengths 192 256 384]
"""

from __future__ import annotations

import argparse

from yelp_lora.artifacts import read_run
from yelp_lora.data.mixing import run_training_rows
from yelp_lora.inference.predictor import Predictor
from yelp_lora.metrics import headline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--lengths", type=int, nargs="+", default=[192, 256, 384])
    args = parser.parse_args()
    if any(not 16 <= length <= 512 for length in args.lengths):
        parser.error(f"--lengths {args.lengths}: each must be between 16 and the model's 512 positions")
    _, validation = run_training_rows(read_run(args.run)[1])

    def show(what: str, predictor: Predictor) -> None:
        predictions = predictor.probabilities(validation.texts).probabilities.argmax(axis=1)
        scores = headline(validation.labels, predictions)
        print(f"{args.run} {what}: accuracy {scores['accuracy']:.4f}, macro-F1 {scores['macro_f1']:.4f}", flush=True)

    predictor = Predictor(args.run, backend="torch")
    trained = predictor.max_length
    for length in args.lengths:
        # head: the whole cut moves with the length; head+tail: the recorded head stays, the tail grows
        predictor.max_length, predictor.meta = length, predictor.meta.model_copy(update={"max_length": length})
        show(f"{predictor.meta.truncation} at {length} tokens{' (as trained)' if length == trained else ''}", predictor)
    show(f"chunk at {trained} tokens", Predictor(args.run, backend="torch", long_text="chunk"))


if __name__ == "__main__":
    main()
