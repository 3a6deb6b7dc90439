"""`yelp-lora`: a thin command line over the stages (config, data, model, train, evaluate, predict)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Tokenisers run inside our own batching; a second thread pool per process only oversubscribes the CPU.
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
            "model.attention": args.attention,
            "model.attention_dropout": args.attention_dropout,
            "data.source": args.data,
            "data.train_samples": args.train_samples,
            "data.val_samples": args.val_samples,
            "data.skip_bad_rows": True if args.skip_bad_rows else None,
            "train.epochs": args.epochs,
            "train.max_steps": args.max_steps,
            "train.learning_rate": args.lr,
            "train.seed": args.seed,
            "train.train_batch_size": args.batch_size,
            "train.micro_batch_size": args.micro_batch_size,
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
    from yelp_lora.evaluate import compare

    result = compare(
        args.adapter, args.data, args.n, args.seed, args.skip_bad_rows, args.batch_size, args.with_classical
    )
    _show_comparison(result, args.json)


def _show_comparison(result: dict, json_file: str | None) -> None:
    from yelp_lora.evaluate import format_compare

    print(format_compare(result))
    _write_json(json_file, result)


def cmd_report(args: argparse.Namespace) -> None:
    from yelp_lora.report import REPORT_HTML, REPORT_MD, build_report

    if args.resamples < 1 or args.n < 1:
        raise UserError(f"--n and --resamples must be at least 1 (got --n {args.n}, --resamples {args.resamples})")
    out, comparison = build_report(
        args.run_dir, args.out, args.data, args.n, args.seed, args.batch_size, not args.no_classical,
        args.resamples, args.skip_bad_rows,
    )
    if args.compare_json:  # the sample is scored once for both
        _show_comparison(comparison, args.compare_json)
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
    from yelp_lora.predict import format_prediction

    if args.output:
        return _predict_file(args)
    texts = _read_inputs(args)
    predictor = _load_predictor(args, bf16=args.bf16, batch_size=args.batch_size, backend=args.backend)
    predictions = predictor.predict(texts, progress=len(texts) > predictor.batch_size)
    if args.json:
        print(json.dumps([{"text": t, **p.as_dict()} for t, p in zip(texts, predictions)], indent=2, ensure_ascii=False))
    else:
        for text, prediction in zip(texts, predictions):
            print(format_prediction(text, prediction))


def _predict_file(args: argparse.Namespace) -> None:
    from yelp_lora.batch import format_summary, predict_file

    if args.texts or not args.input:
        raise UserError("--output predicts a whole --input FILE; give no review texts as arguments")
    if args.adapter:
        adapter = args.adapter
    else:
        from yelp_lora.registry import Registry

        adapter, _ = Registry(args.registry).open(args.version or args.alias)  # verified before use
    summary = predict_file(
        adapter, args.input, args.output, chunk_rows=args.chunk_size, resume=args.resume,
        skip_bad_rows=args.skip_bad_rows, bf16=args.bf16, batch_size=args.batch_size, backend=args.backend,
    )
    print(format_summary(summary), file=sys.stderr)
    if summary["rank"] == 0:
        print(f"Predictions written to {args.output}", file=sys.stderr)
    _write_json(args.json_summary, summary)


def _load_predictor(args: argparse.Namespace, **options):
    """The Predictor named by --adapter DIR, or by --version / --alias from the registry (verified)."""
    from yelp_lora.predict import Predictor

    if args.adapter:
        return Predictor(args.adapter, **options)
    return Predictor.from_registry(args.version or args.alias, args.registry, **options)


def cmd_registry(args: argparse.Namespace) -> None:
    from yelp_lora.registry import Registry, format_version_line

    registry = Registry(args.registry)
    if args.action == "add":
        manifest = registry.add(args.run_dir, args.name)
        print(f"Registered {args.run_dir} as {manifest['version']} in {registry.root}/ (adapter sha256 {manifest['adapter_sha256']})")
        same = [v for v in registry.versions()[:-1] if registry.manifest(v)["adapter_sha256"] == manifest["adapter_sha256"]]
        if same:
            print(f"note: same adapter weights as {', '.join(same)}")
    elif args.action == "list":
        versions = registry.versions()
        print("\n".join(format_version_line(registry, v) for v in versions) or f"registry {registry.root} is empty")
    elif args.action == "show":
        manifest = registry.manifest(args.ref)
        print(json.dumps({**manifest, "aliases": registry.aliases_of(manifest["version"])}, indent=2))
    elif args.action == "promote":
        print(f"{args.alias} -> {registry.promote(args.ref, args.alias)}")
    elif args.action == "verify":
        refs = [args.ref] if args.ref else registry.versions()
        if not refs:
            raise UserError(f"registry {registry.root} holds no versions to verify")
        for ref in refs:
            print(f"{registry.verify(ref)['version']}: ok, every file matches its sha256")


def cmd_export(args: argparse.Namespace) -> None:
    from yelp_lora.registry import Registry, export_merged

    target = export_merged(Registry(args.registry), args.ref, args.merged)
    print(f"Merged model written to {target}/; load it with "
          f"transformers.pipeline('text-classification', model='{target}', top_k=None)")


def cmd_serve(args: argparse.Namespace) -> None:
    from yelp_lora.serve import ServeSettings, serve

    given = {"max_texts": args.max_texts, "max_chars": args.max_chars, "max_batch": args.max_batch,
             "max_wait_ms": args.max_wait_ms, "api_key": args.api_key or os.environ.get("YELP_LORA_API_KEY")}
    settings = ServeSettings(**{key: value for key, value in given.items() if value is not None})
    if min(settings.max_texts, settings.max_chars, settings.max_batch) < 1 or settings.max_wait_ms < 0:
        raise UserError("--max-texts, --max-chars and --max-batch must be positive, --max-wait-ms not negative")
    if settings.max_batch < settings.max_texts:
        raise UserError(f"--max-batch ({settings.max_batch}) must be at least --max-texts ({settings.max_texts})")
    # The worker gathers up to --max-batch texts; the predictor runs them in its own length-sorted batches.
    predictor = _load_predictor(args, bf16=args.bf16, backend=args.backend)
    serve(predictor, host=args.host, port=args.port, settings=settings)


def cmd_mcp(args: argparse.Namespace) -> None:
    from yelp_lora.agent import build_server

    build_server(_load_predictor(args, bf16=args.bf16, backend=args.backend)).run(**_mcp_transport(args))


def _mcp_transport(args: argparse.Namespace) -> dict:
    if args.transport == "stdio":
        return {"transport": "stdio"}
    return {"transport": "streamable-http", "host": args.host, "port": args.port}


def cmd_tool_schema(args: argparse.Namespace) -> None:
    from yelp_lora.agent import openai_tool_schema

    print(json.dumps(openai_tool_schema(), indent=2))


def _add_model_source(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--adapter", help="run directory or adapter directory")
    source.add_argument("--version", help="registry version (v1, v2, ..., latest), verified before loading")
    source.add_argument("--alias", help="registry alias, e.g. production")
    _add_registry_option(parser)
    parser.add_argument("--bf16", action="store_true", help="bf16 weights where the hardware supports it (torch backend)")
    parser.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8"],
                        help="torch, or ONNX Runtime on CPU in fp32 or int8 (exported once per adapter, cached)")


def _add_registry_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", metavar="DIR", help="registry directory (default: $YELP_LORA_REGISTRY or ./registry)")


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
    p.add_argument("--batch-size", type=int, help="training batch size (rows per optimizer step)")
    p.add_argument(
        "--micro-batch-size", type=int,
        help="rows per forward pass of a length-sorted step (divides --batch-size; default: 4 on CPU, 16 on CUDA)",
    )
    p.add_argument("--max-length", type=int, help="tokens per review (longer ones are cut)")
    p.add_argument("--pad-to-max-length", action="store_true", help="pad every text to max length (fixed shapes)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"])
    p.add_argument("--attention", choices=["auto", "sdpa", "eager"], help="attention kernel (auto: eager on CPU, sdpa on CUDA)")
    p.add_argument("--attention-dropout", type=float, help="dropout on attention probabilities (default: the base model's)")
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
    p.add_argument("--compare-json", metavar="FILE",
                   help="also print the comparison and write the JSON `compare --json` writes for the same sample")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("predict", help="star rating and probabilities for review texts")
    _add_model_source(p)
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.add_argument("--input", help="CSV / JSONL / Parquet with a 'text' column, or one review per line")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--batch-size", type=int, help="texts per forward pass (default: 16 on CPU, 128 on CUDA, 1 with ONNX: int8 results then never depend on the other texts)")
    p.add_argument("--output", metavar="OUT", help="stream --input into OUT (.jsonl/.csv/.parquet) in bounded memory")
    p.add_argument("--chunk-size", type=int, default=2048, help="rows per chunk with --output (the resume unit)")
    p.add_argument("--resume", action="store_true", help="with --output: continue an interrupted run")
    p.add_argument("--skip-bad-rows", action="store_true", help="with --output: write bad rows with an error, not stop")
    p.add_argument("--json-summary", metavar="FILE", help="with --output: write the run's figures as JSON")
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("registry", help="versioned adapter registry: add, list, show, promote, verify")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("add", help="register a run's best adapter as the next version")
    a.add_argument("run_dir", metavar="RUN_DIR")
    a.add_argument("--name", help="a human name for this version")
    a = actions.add_parser("list", help="versions, their validation macro-F1 and aliases")
    a = actions.add_parser("show", help="a version's manifest (JSON)")
    a.add_argument("ref", metavar="VERSION", help="version or alias")
    a = actions.add_parser("promote", help="point an alias (e.g. production) at a version")
    a.add_argument("ref", metavar="VERSION")
    a.add_argument("--alias", required=True)
    a = actions.add_parser("verify", help="check every file's sha256 against the manifest (all versions by default)")
    a.add_argument("ref", metavar="VERSION", nargs="?")
    for a in actions.choices.values():
        _add_registry_option(a)
    p.set_defaults(handler=cmd_registry)

    p = sub.add_parser("export", help="write a merged full model a plain transformers pipeline loads")
    p.add_argument("ref", metavar="VERSION", help="registry version or alias")
    p.add_argument("--merged", required=True, metavar="DIR", help="directory to write")
    _add_registry_option(p)
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("serve", help="HTTP service: POST /v1/classify, /healthz, /readyz, /metrics, a web page at /")
    _add_model_source(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require this key on /v1/* (or set YELP_LORA_API_KEY)")
    p.add_argument("--max-texts", type=int, help="texts per request (default 64)")
    p.add_argument("--max-chars", type=int, help="characters per text (default 20,000)")
    p.add_argument("--max-batch", type=int, help="texts per model batch, >= --max-texts (default 64)")
    p.add_argument("--max-wait-ms", type=float, help="how long a batch waits for more requests (default 0: it takes what is waiting when the model is free)")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("mcp", help="Model Context Protocol server with the classify_review_sentiment tool")
    _add_model_source(p)
    p.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    p.add_argument("--host", default="127.0.0.1", help="with --transport http")
    p.add_argument("--port", type=int, default=8001, help="with --transport http (endpoint /mcp)")
    p.set_defaults(handler=cmd_mcp)

    p = sub.add_parser("tool-schema", help="print classify_review_sentiment as an OpenAI function-tool schema")
    p.set_defaults(handler=cmd_tool_schema)

    p = sub.add_parser("bench", help="training and prediction throughput: ours against the usual way, side by side")
    p.add_argument("--model", default="minilm", help="minilm, bert-base (its shape, random weights) or a model directory")
    p.add_argument("--adapter", help="adapter for the prediction and service bench (default: the one the bench trains)")
    p.add_argument("--samples", type=int, help="training rows from train.csv, one pass (default 256)")
    p.add_argument("--predict-samples", type=int, help="test.csv rows to predict (default 1000: all)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the bench runs, figures mean little")
    p.add_argument("--no-service", action="store_true", help="leave out the HTTP service bench")
    p.add_argument("--skip", action="append", default=[], metavar="PATH",
                   help="leave out a path: usual, ours-fp32, ours (training); pipeline, merged-fp32, merged-bf16, onnx-fp32, onnx-int8")
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
