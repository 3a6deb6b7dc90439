"""`yelp-lora`: a thin command line over the stages (config, data, model, train, evaluate, predict)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Nothing is fetched at run time unless asked: the hub stays usable where HF_HUB_OFFLINE=0.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class UserError(Exception):
    """A mistake in what the user asked for: printed as one clear line, never a traceback."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from yelp_lora.atomic import SaveError
    from yelp_lora.config import ConfigError
    from yelp_lora.data import DataError
    from yelp_lora.model import ModelError

    return (UserError, ConfigError, DataError, ModelError, SaveError)


def _write_json(path: str | None, payload: dict) -> None:
    if path:
        from yelp_lora.atomic import atomic_write_text

        atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
        print(f"JSON written to {path}", file=sys.stderr)


# ---------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> None:
    from yelp_lora.config import load_config
    from yelp_lora.train import format_summary, train

    config = load_config(
        args.config,
        {
            "model.name_or_path": args.model,
            "model.max_length": args.max_length,
            "data.source": args.data,
            "data.train_samples": args.train_samples,
            "data.val_samples": args.val_samples,
            "data.skip_bad_rows": True if args.skip_bad_rows else None,
            "train.epochs": args.epochs,
            "train.max_steps": args.max_steps,
            "train.learning_rate": args.lr,
            "train.seed": args.seed,
            "train.train_batch_size": args.batch_size,
            "train.pad_to_max_length": True if args.pad_to_max_length else None,
            "train.precision": args.precision,
            "train.save_steps": args.save_steps,
            "train.logging_steps": args.logging_steps,
        },
    )
    if args.seeds is not None:
        from yelp_lora.sweep import SWEEP_FILE, format_sweep, sweep

        if args.seeds < 1:
            raise UserError(f"--seeds must be at least 1, not {args.seeds}")
        if args.resume:
            raise UserError("--seeds reruns only unfinished seeds by itself; drop --resume")
        summary = sweep(config, args.output_dir, args.seeds, n=args.compare_n)
        print(format_sweep(summary))
        print(f"Sweep written to {Path(args.output_dir) / SWEEP_FILE} (one run per seed in seed-S/)")
        return
    record = train(config, args.output_dir, resume=args.resume)
    if record:
        print(format_summary(record))
        print(f"Run written to {args.output_dir}/ (adapter/, run.json)")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from yelp_lora.evaluate import evaluate
    from yelp_lora.metrics import format_detailed

    result = evaluate(args.adapter, args.data, args.split, args.n, args.seed, args.skip_bad_rows, args.batch_size)
    print(f"===== {args.split} (N={result['n']}) =====")
    print(format_detailed(result))
    _write_json(args.json, result)


def cmd_compare(args: argparse.Namespace) -> None:
    from yelp_lora.evaluate import compare, format_compare

    result = compare(
        args.adapter, args.data, args.n, args.seed, args.skip_bad_rows, args.batch_size, args.with_classical
    )
    print(format_compare(result))
    _write_json(args.json, result)


def cmd_report(args: argparse.Namespace) -> None:
    from yelp_lora.report import REPORT_HTML, REPORT_MD, build_report

    if args.resamples < 1 or args.n < 1:
        raise UserError(f"--n and --resamples must be at least 1 (got --n {args.n}, --resamples {args.resamples})")
    out = build_report(
        args.run_dir, args.out, args.data, args.n, args.seed, args.batch_size, not args.no_classical,
        args.resamples, args.skip_bad_rows,
    )
    print(f"Report written to {out / REPORT_HTML} (and {REPORT_MD}, report.json, PNG figures beside them)")


def _read_inputs(args: argparse.Namespace) -> list[str]:
    from yelp_lora.data import check_input_text, iter_texts

    texts = [check_input_text(f"argument {i + 1}", text) for i, text in enumerate(args.texts)]
    if args.input:
        texts += [check_input_text(f"{args.input}: {where}", text) for where, text in iter_texts(Path(args.input))]
    if not texts:
        raise UserError("nothing to predict: give review texts as arguments or --input FILE")
    return texts


def cmd_predict(args: argparse.Namespace) -> None:
    from yelp_lora.predict import Predictor, format_prediction

    texts = _read_inputs(args)
    predictor = Predictor(args.adapter, bf16=args.bf16, batch_size=args.batch_size)
    predictions = predictor.predict(texts, progress=len(texts) > args.batch_size)
    if args.json:
        print(json.dumps([{"text": t, **p.as_dict()} for t, p in zip(texts, predictions)], indent=2, ensure_ascii=False))
    else:
        for text, prediction in zip(texts, predictions):
            print(format_prediction(text, prediction))


# ---------------------------------------------------------------- parser


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="hub data set id, directory with train/test files, or one file (CSV, JSONL, Parquet)")
    parser.add_argument("--skip-bad-rows", action="store_true", help="skip and count bad rows instead of stopping")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yelp-lora", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="fine-tune with LoRA; writes DIR/adapter/ and DIR/run.json")
    p.add_argument("--config", help="YAML preset, e.g. configs/demo.yaml or configs/seed.yaml")
    p.add_argument("--model", help="hub id, local directory, or 'minilm' (the packaged model)")
    _add_data_options(p)
    p.add_argument("--train-samples", type=int, help="seeded stratified subsample of the train split")
    p.add_argument("--val-samples", type=int, help="validation rows carved from train")
    p.add_argument("--epochs", type=float)
    p.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    p.add_argument("--lr", type=float, help="peak learning rate (linear decay)")
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int, help="training batch size")
    p.add_argument("--max-length", type=int, help="tokens per review (longer ones are cut)")
    p.add_argument("--pad-to-max-length", action="store_true", help="pad every text to max length (fixed shapes)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"])
    p.add_argument("--save-steps", type=int, help="checkpoint every N steps so --resume can continue")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in DIR")
    p.add_argument("--logging-steps", type=int, help="log loss, learning rate and grad norm every N steps")
    p.add_argument("--seeds", type=int, metavar="K", help="train seeds SEED..SEED+K-1 into DIR/seed-S/ and report "
                   "mean ± std of the test metrics in DIR/sweep.json")
    p.add_argument("--compare-n", type=int, default=500, help="with --seeds: test reviews each seed is compared on")
    p.add_argument("--output-dir", required=True, help="run directory to write")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("evaluate", help="accuracy, macro-F1, per-class scores and confusion matrix")
    p.add_argument("--adapter", required=True, help="run directory or adapter directory")
    _add_data_options(p)
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--n", type=int, help="seeded stratified sample size (default: all rows)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("compare", help="untuned baseline against the adapter on the same test sample")
    p.add_argument("--adapter", required=True, help="run directory or adapter directory")
    _add_data_options(p)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    p.add_argument("--with-classical", action="store_true",
                   help="also TF-IDF + logistic regression, fitted on the adapter's training rows (needs the run dir)")
    p.set_defaults(handler=cmd_compare)

    p = sub.add_parser("report", help="HTML + Markdown report with figures: curves, ordinal metrics, CIs, calibration")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by train (adapter/ and run.json)")
    _add_data_options(p)
    p.add_argument("--n", type=int, default=500, help="test reviews (seeded stratified sample)")
    p.add_argument("--seed", type=int, default=42, help="test sample and bootstrap seed")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--no-classical", action="store_true", help="leave out the TF-IDF + logistic regression baseline")
    p.add_argument("--out", help="report directory (default RUN_DIR/report); replaced whole")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("predict", help="star rating and probabilities for review texts")
    p.add_argument("--adapter", required=True, help="run directory or adapter directory")
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.add_argument("--input", help="CSV / JSONL / Parquet with a 'text' column, or one review per line")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast where the hardware supports it")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(handler=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except _user_errors() as err:
        print(f"yelp-lora {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"yelp-lora {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
