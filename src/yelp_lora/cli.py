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
        },
    )
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

    result = compare(args.adapter, args.data, args.n, args.seed, args.skip_bad_rows, args.batch_size)
    print(format_compare(result))
    _write_json(args.json, result)


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
    predictor = Predictor(args.adapter, bf16=args.bf16, batch_size=args.batch_size, backend=args.backend)
    predictions = predictor.predict(texts, progress=len(texts) > args.batch_size)
    if args.json:
        print(json.dumps([{"text": t, **p.as_dict()} for t, p in zip(texts, predictions)], indent=2, ensure_ascii=False))
    else:
        for text, prediction in zip(texts, predictions):
            print(format_prediction(text, prediction))


def cmd_bench(args: argparse.Namespace) -> None:
    from yelp_lora.bench import QUICK, BenchSettings, format_report, run_bench

    settings = BenchSettings(model=args.model, adapter=args.adapter, service=not args.no_service, skip=args.skip)
    explicit = {name: getattr(args, name) for name in ("samples", "predict_samples") if getattr(args, name) is not None}
    for name, value in {**(QUICK if args.quick else {}), **explicit}.items():
        setattr(settings, name, value)
    if args.model not in ("minilm", "bert-base") and not Path(args.model).is_dir():
        raise UserError(f"--model {args.model!r}: expected minilm, bert-base or a model directory")
    result = run_bench(settings, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_report(result))
    _write_json(args.json, result)


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
    p.set_defaults(handler=cmd_compare)

    p = sub.add_parser("predict", help="star rating and probabilities for review texts")
    p.add_argument("--adapter", required=True, help="run directory or adapter directory")
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.add_argument("--input", help="CSV / JSONL / Parquet with a 'text' column, or one review per line")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast where the hardware supports it")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8"],
                   help="torch, or ONNX Runtime on CPU in fp32 or int8 (exported once per adapter, cached)")
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("bench", help="training and prediction throughput: ours against the usual way, side by side")
    p.add_argument("--model", default="minilm", help="minilm, bert-base (its shape, random weights) or a model directory")
    p.add_argument("--adapter", help="adapter for the prediction and service bench (default: the one the bench trains)")
    p.add_argument("--samples", type=int, help="training rows from train.csv, one pass (default 256)")
    p.add_argument("--predict-samples", type=int, help="test.csv rows to predict (default 1000: all)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the bench runs, figures mean little")
    p.add_argument("--no-service", action="store_true", help="leave out the HTTP service bench")
    p.add_argument("--skip", action="append", default=[], metavar="PATH",
                   help="leave out a path: usual, ours-fp32, ours (training); pipeline, merged-fp32, merged-bf16, onnx-int8")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    p.set_defaults(handler=cmd_bench)
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
