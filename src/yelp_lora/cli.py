"""`yelp-lora`: a thin command line over the stages (config, data, modeling, training, evaluation,
registry, inference, serving, bench).

Each flag that sets a field of a settings model is declared once, here, under that field's name
(`dest`): `--lr` sets `train.learning_rate` of the run config, `--n` sets `n` of EvalSettings. A
flag not given is not passed on, so every default lives in its settings model (config.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

SUPPRESS = argparse.SUPPRESS
MCP_PORT = 8001  # beside serve's 8000


class _Once(argparse.Action):
    """Stores a flag's value, refusing the flag given twice (argparse would keep the last, silently)."""

    def __call__(self, parser, namespace, values, option_string=None):
        # Unset, the attribute is absent (SUPPRESS) or still the parser's default object (set_defaults).
        if hasattr(namespace, self.dest) and getattr(namespace, self.dest) is not parser.get_default(self.dest):
            parser.error(f"{option_string} given twice: give it once")
        setattr(namespace, self.dest, values)


def _setting(parser: argparse.ArgumentParser, flag: str, dest: str, **options) -> None:
    """A flag that sets settings field `dest` when given, and passes nothing when not."""
    parser.add_argument(flag, dest=dest, default=SUPPRESS, **({"action": _Once} | options))


def _given(args: argparse.Namespace, fields) -> dict:
    """The settings fields the user set, by name."""
    return {name: getattr(args, name) for name in fields if hasattr(args, name)}


def _check_json_file(path: str | bool | None, flag: str) -> None:
    """A JSON FILE that cannot be written fails now, not after the work it records (predict's --json is a switch)."""
    if isinstance(path, str):
        from yelp_lora.artifacts import ADAPTER_CONFIG_FILE, MANIFEST_FILE, RUN_FILE
        from yelp_lora.errors import UserError
        from yelp_lora.util.atomic import check_output_dir

        target = Path(path)
        if target.is_dir():
            raise UserError(f"{flag} {path} is a directory: name a file")
        if (target.parent / ADAPTER_CONFIG_FILE).is_file() or (target.name in (RUN_FILE, MANIFEST_FILE) and target.exists()):
            raise UserError(f"{flag} {path} would write over a run's or an adapter's own record: name another file")
        check_output_dir(target.absolute().parent, f"{flag}'s directory")


def _write_json(path: str | None, record) -> None:
    """Write a record (pydantic) or a plain dict as the command's JSON file."""
    if path:
        from yelp_lora.util.atomic import atomic_write_text

        text = record.to_json() if hasattr(record, "to_json") else json.dumps(record, indent=2) + "\n"
        atomic_write_text(path, text)
        print(f"JSON written to {path}", file=sys.stderr)


def _eval_settings(args: argparse.Namespace, **values):
    from yelp_lora.config import EvalSettings, build_settings

    return build_settings(EvalSettings, **{**_given(args, EvalSettings.model_fields), **values})


# ---------------------------------------------------------------- commands


def _run_config_overrides(args: argparse.Namespace) -> dict:
    """The run-config fields the user set, by a flag (its dest is a dotted field) or by --set."""
    from yelp_lora.config import parse_set
    from yelp_lora.errors import UserError

    overrides = {dest: value for dest, value in vars(args).items() if "." in dest}
    assigned = parse_set(args.set)
    both = sorted(set(overrides) & set(assigned))
    if both:  # neither order nor precedence would be obvious: say so rather than drop one silently
        raise UserError(f"{', '.join(both)} set twice, by a flag and by --set: give one")
    return {**overrides, **assigned}


def cmd_train(args: argparse.Namespace) -> None:
    from yelp_lora.config import load_config, unused_settings
    from yelp_lora.errors import UserError
    from yelp_lora.training.recipe import format_run_summary, train

    given = _run_config_overrides(args)
    config = load_config(args.config, given)
    unused = unused_settings(config, given)
    if unused:
        raise UserError("; ".join(unused))
    if args.compare_n is not None and args.seeds is None:
        raise UserError("--compare-n is the test sample of a seed sweep: it needs --seeds K")
    if args.seeds is not None:
        from yelp_lora.evaluation.seeds import SWEEP_FILE, format_sweep, sweep

        if args.seeds < 1:
            raise UserError(f"--seeds must be at least 1, not {args.seeds}")
        if args.resume:
            raise UserError("--seeds reruns only unfinished seeds by itself; drop --resume")
        if args.compare_n is not None and args.compare_n < 1:
            raise UserError(f"--compare-n must be at least 1 (got {args.compare_n})")
        settings = _eval_settings(argparse.Namespace(), **({"n": args.compare_n} if args.compare_n is not None else {}))
        summary = sweep(config, args.output_dir, args.seeds, settings, overwrite=args.overwrite)
        print(format_sweep(summary))
        print(f"Sweep written to {Path(args.output_dir) / SWEEP_FILE} (one run per seed in seed-S/)")
        return
    record = train(config, args.output_dir, resume=args.resume, overwrite=args.overwrite)
    if record:
        print(format_run_summary(record))
        print(f"Run written to {args.output_dir}/ (adapter/, run.json)")


def cmd_tune(args: argparse.Namespace) -> None:
    from yelp_lora.config import TuneSettings, build_settings, load_config
    from yelp_lora.training.space import load_space
    from yelp_lora.training.tune import format_tune_summary, tune

    settings = build_settings(TuneSettings, **_given(args, TuneSettings.model_fields))
    given = _run_config_overrides(args)
    space = load_space(args.space)
    held = space.holding(given, args.space)
    for name in sorted(set(space.domains()) - set(held.domains())):
        print(f"tune: {name} stays {given[name]!r} in every trial (a flag or --set gave it), not searched", file=sys.stderr)
    result = tune(load_config(args.config, given), held, settings)
    print(format_tune_summary(result))


def cmd_calibrate(args: argparse.Namespace) -> None:
    from yelp_lora.training.recipe import calibrate_run

    path = calibrate_run(args.run_dir, args.data)
    print(f"int8 activation ranges written to {path}: `--backend onnx-int8` now smooths with them")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from yelp_lora.evaluation.evaluate import evaluate, format_detailed

    settings = _eval_settings(args)
    result = evaluate(args.adapter, settings)
    print(f"===== {settings.split}: {result.data.source} (N={result.n}) =====")
    print(format_detailed(result))
    _write_json(args.json, result)


def cmd_compare(args: argparse.Namespace) -> None:
    from yelp_lora.evaluation.evaluate import compare

    _show_comparison(compare(args.adapter, _eval_settings(args)), args.json)


def _show_comparison(result, json_file: str | None) -> None:
    from yelp_lora.evaluation.evaluate import format_compare

    print(format_compare(result))
    _write_json(json_file, result)


def cmd_report(args: argparse.Namespace) -> None:
    from yelp_lora.evaluation.report import REPORT_HTML, REPORT_MD, build_report

    out, comparison = build_report(args.run_dir, _eval_settings(args), args.out)
    if args.compare_json:  # the sample is scored once for both
        _show_comparison(comparison, args.compare_json)
    print(f"Report written to {out / REPORT_HTML} (and {REPORT_MD}, report.json, PNG figures beside them)")


def _read_inputs(args: argparse.Namespace) -> list[str]:
    from yelp_lora.data.rows import check_input_text, iter_texts
    from yelp_lora.errors import DataError, UserError

    texts = [check_input_text(f"argument {i + 1}", text) for i, text in enumerate(args.texts)]
    if args.input:
        for row in iter_texts(Path(args.input)):
            if row.problem:
                raise DataError(f"{args.input}: {row.where}: {row.problem}")
            texts.append(row.text)
    if not texts:
        raise UserError(f"nothing to predict: {args.input} holds no review texts" if args.input else
                        "nothing to predict: give review texts as arguments or --input FILE")
    return texts


def cmd_predict(args: argparse.Namespace) -> None:
    from yelp_lora.inference.predictor import format_prediction

    if args.output:
        return _predict_file(args)
    from yelp_lora.errors import UserError

    given = [flag for flag, value in (("--resume", args.resume), ("--skip-bad-rows", args.skip_bad_rows),
                                      ("--json-summary", args.json_summary), ("--chunk-size", args.chunk_size)) if value]
    if given:  # they belong to a batch job; without one they would be ignored
        one = len(given) == 1
        raise UserError(f"{', '.join(given)} {'needs' if one else 'need'} --output: {'it applies' if one else 'they apply'} "
                        "to predicting a whole --input FILE into OUT")
    texts = _read_inputs(args)
    predictor = _load_predictor(args, batch_size=args.batch_size)
    predictions = predictor.predict(texts, progress=len(texts) > predictor.batch_size)
    if args.json:
        print(json.dumps([{"text": t, **p.as_dict()} for t, p in zip(texts, predictions)], indent=2, ensure_ascii=False))
    else:
        for text, prediction in zip(texts, predictions):
            print(format_prediction(text, prediction))


def _predict_file(args: argparse.Namespace) -> None:
    from yelp_lora.errors import UserError
    from yelp_lora.inference.batch import format_batch_summary, predict_file

    if not args.input:
        raise UserError("--output needs --input FILE: it predicts a whole file")
    if args.texts:
        raise UserError("--output predicts a whole --input FILE; give no review texts as arguments")
    if args.json:
        raise UserError("--json prints the predictions of review texts given here; with --output they go to OUT, "
                        "in the format its suffix names (.jsonl, .csv, .parquet)")
    written = {"--output": Path(args.output), "--json-summary": Path(args.json_summary) if args.json_summary else None}
    for flag, path in written.items():  # written over, the reviews would be lost
        if path is not None and path.resolve() == Path(args.input).resolve():
            raise UserError(f"{flag} {path} is the --input file: it would be written over; name another file")
        if path is not None and path.is_dir():  # found now, not once every row is predicted
            raise UserError(f"{flag} {path} is a directory: name a file")
    if args.adapter:
        adapter = args.adapter
    else:
        from yelp_lora.registry.store import Registry

        adapter, _ = Registry(args.registry).open(args.version or args.alias)  # verified before use
    chunking = {} if args.chunk_size is None else {"chunk_rows": args.chunk_size}
    summary = predict_file(
        adapter, args.input, args.output, **chunking, resume=args.resume,
        skip_bad_rows=args.skip_bad_rows, bf16=args.bf16, batch_size=args.batch_size, backend=args.backend,
        long_text=args.long_text,
    )
    print(format_batch_summary(summary), file=sys.stderr)
    if summary["rank"] == 0:
        print(f"Predictions written to {args.output}", file=sys.stderr)
    json_summary = args.json_summary
    if json_summary and summary["world_size"] > 1:  # each rank's own figures, in a file of its own
        path = Path(json_summary)
        json_summary = str(path.with_name(f"{path.stem}.rank{summary['rank']}{path.suffix}"))
    _write_json(json_summary, summary)


def _load_predictor(args: argparse.Namespace, **options):
    """The Predictor named by --adapter DIR, or by --version / --alias from the registry (verified)."""
    from yelp_lora.inference.predictor import Predictor

    options.update(bf16=args.bf16, backend=args.backend, long_text=args.long_text)
    if args.adapter:
        return Predictor(args.adapter, **options)
    return Predictor.from_registry(args.version or args.alias, args.registry, **options)


def cmd_registry(args: argparse.Namespace) -> None:
    from yelp_lora.errors import RegistryError, UserError
    from yelp_lora.registry.card import format_version_line
    from yelp_lora.registry.store import Registry

    registry = Registry(args.registry)
    if args.action == "add":
        manifest = registry.add(args.run_dir, args.name)
        print(f"Registered {args.run_dir} as {manifest.version} in {registry.root}/ (adapter sha256 {manifest.adapter_sha256})")
        others = [(v, _manifest_or_problem(registry, v)[0]) for v in registry.versions() if v != manifest.version]
        same = [v for v, other in others if other and other.adapter_sha256 == manifest.adapter_sha256]
        if same:
            print(f"note: same adapter weights as {', '.join(same)}")
    elif args.action == "list":
        registry.refuse_a_file_root()
        if not registry.root.is_dir():
            print(f"no registry in {registry.root}/ yet: no versions (`registry add RUN_DIR` creates it; "
                  "another one: --registry or $YELP_LORA_REGISTRY)")
            return
        lines, notes, versions = [], [], registry.versions()
        try:
            aliases = registry.aliases()
        except RegistryError as err:  # the versions are still worth listing
            aliases, notes = {}, [f"note: aliases not shown: {err}"]
        for version in versions:  # a damaged version is listed as such, the others as usual
            manifest, problem = _manifest_or_problem(registry, version)
            missing = registry.missing_files(version, manifest) if manifest else []
            if missing:  # only whether they are there: `verify` hashes them
                manifest, problem = None, f"{len(missing)} of its files are missing ({', '.join(missing[:3])})"
            named = registry.aliases_of(version, aliases)
            lines.append(format_version_line(manifest, named) if manifest else
                         f"{version:<5} damaged: {problem} (see `yelp-lora registry verify {version}`)")
        notes += [f"note: alias '{alias}' points at {target}, which is not in this registry"
                  for alias, target in sorted(aliases.items()) if target not in versions]
        lines = lines or [f"the registry in {registry.root}/ is empty"]
        print("\n".join(lines + notes))
    elif args.action == "show":
        manifest = registry.manifest(args.ref)
        print(json.dumps({**manifest.model_dump(mode="json"), "aliases": registry.aliases_of(manifest.version)}, indent=2))
    elif args.action == "promote":
        print(f"{args.alias} -> {registry.promote(args.ref, args.alias)}")
    elif args.action == "verify":
        refs = [registry.resolve(args.ref)] if args.ref else registry.versions()
        if not refs:
            raise UserError(f"the registry in {registry.root}/ holds no versions to verify")
        failed = []
        for version in refs:  # every version is checked, and each one's problems listed
            try:
                problems = registry.problems(version)
            except RegistryError as err:  # its manifest cannot be read
                problems = [str(err)]
            if problems:
                failed.append(version)
                print(f"{version}: FAILED\n  " + "\n  ".join(problems), file=sys.stderr)
            else:
                print(f"{version}: ok, every file matches its sha256")
        if failed:
            raise RegistryError(f"{len(failed)} of {len(refs)} version(s) differ from their manifests: {', '.join(failed)}")


def _manifest_or_problem(registry, version: str):
    """(its manifest, None), or (None, why it cannot be read) for a damaged or half-deleted version."""
    from yelp_lora.errors import RegistryError

    try:
        manifest = registry.manifest(version)
    except RegistryError as err:
        return None, str(err)
    if manifest.version != version:  # copied or edited: listed as another version, it would mislead
        return None, f"{version}/manifest.json names version {manifest.version!r}"
    return manifest, None


def cmd_export(args: argparse.Namespace) -> None:
    from yelp_lora.registry.export import export_merged
    from yelp_lora.registry.store import Registry

    target = export_merged(Registry(args.registry), args.ref, args.merged)
    print(f"Merged model written to {target}/; load it with "
          f"transformers.pipeline('text-classification', model='{target}', top_k=None)")


def cmd_serve(args: argparse.Namespace) -> None:
    from yelp_lora.config import ServeSettings, build_settings
    from yelp_lora.errors import ModelError
    from yelp_lora.serving.app import listen, serve

    settings = build_settings(ServeSettings, **_given(args, ServeSettings.model_fields))  # bad limits fail before loading
    with listen(settings) as sock:  # so does an address in use
        # The worker gathers up to --max-batch texts; the predictor runs them in its own length-sorted batches.
        predictor = _load_predictor(args)
        loaded = predictor.info.adapter_sha256
        if settings.expect_sha256 and loaded != settings.expect_sha256.lower():
            raise ModelError(f"--expect-sha256 {settings.expect_sha256}: the adapter loaded has sha256 {loaded}; not serving it")
        serve(predictor, settings, sock)


def cmd_mcp(args: argparse.Namespace) -> None:
    from yelp_lora.config import ServeSettings, build_settings
    from yelp_lora.errors import UserError
    from yelp_lora.serving.agent import build_server, run_http
    from yelp_lora.serving.app import listen

    given = _given(args, ("api_key", "api_key_file", "host", "port"))
    if args.transport == "stdio":
        if given:  # stdio has no address and no key: the client that started the process owns its pipes
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise UserError(f"{flags}: only with --transport http (stdio talks over the pipes of the client that started it)")
        return build_server(_load_predictor(args)).run(transport="stdio")
    # The key, host and port read and checked as serve's are; the address bound before the model loads.
    settings = build_settings(ServeSettings, **{"port": MCP_PORT, **given})
    with listen(settings) as sock:
        run_http(build_server(_load_predictor(args)), sock, settings)


def cmd_tool_schema(args: argparse.Namespace) -> None:
    from yelp_lora.serving.agent import openai_tool_schema

    print(json.dumps(openai_tool_schema(), indent=2))


def cmd_bench(args: argparse.Namespace) -> None:
    from yelp_lora.bench.report import format_report
    from yelp_lora.bench.run import run_bench
    from yelp_lora.config import QUICK_BENCH, BenchSettings, build_settings

    settings = build_settings(BenchSettings, **{**(QUICK_BENCH if args.quick else {}), **_given(args, BenchSettings.model_fields)})
    result = run_bench(settings, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_report(result))
    _write_json(args.json, result)


# ---------------------------------------------------------------- parser


def _add_model_source(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--adapter", help="run directory or adapter directory")
    source.add_argument("--version", help="registry version (v1, v2, ..., latest), verified before loading")
    source.add_argument("--alias", help="registry alias, e.g. production")
    _add_registry_option(parser)
    parser.add_argument("--bf16", action="store_true", help="bf16 weights where the hardware supports it (torch and openvino backends)")
    # modeling.hardware.PREDICTION_BACKENDS, spelt out: the parser is built before anything is imported.
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx", "onnx-int8", "openvino"],
                        help="auto (the default: chosen per machine, never int8; `yelp-lora bench` says what and why), "
                        "torch, ONNX Runtime on CPU in fp32 or int8 (exported once per adapter, cached), or OpenVINO "
                        "on CPU (the same export; fp32, bf16 with --bf16; the [openvino] extra)")
    # config.LONG_TEXT_MODES, spelt out: the parser is built before anything is imported.
    parser.add_argument("--long-text", default="truncate", choices=["truncate", "chunk"],
                        help="a review longer than the model's token limit: truncate (cut as in training; the default) "
                        "or chunk (read as overlapping windows, at most 8, whose probabilities are averaged; up to 8x the work)")


def _add_registry_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", metavar="DIR", help="registry directory (default: $YELP_LORA_REGISTRY or ./registry)")


def _add_key_options(parser: argparse.ArgumentParser, where: str) -> None:
    _setting(parser, "--api-key-file", "api_key_file", metavar="FILE",
             help=f"require the key in FILE {where} (kept out of `ps`; or set YELP_LORA_API_KEY)")
    _setting(parser, "--api-key", "api_key", help=f"require this key {where} (visible in `ps`: prefer --api-key-file)")


def _train_source(text: str) -> dict:
    """SOURCE[:N|:FRACTION][:balanced] -> a data.extra_train entry."""
    source, *options = text.split(":")

    def refuse(why: str) -> argparse.ArgumentTypeError:
        return argparse.ArgumentTypeError(f"{text!r}: expected SOURCE[:N|:FRACTION][:balanced]; {why}")

    if not source.strip():
        raise refuse("the source is empty")
    entry: dict = {"source": source}
    for option in options:
        if option == "balanced":
            key, value = "balance", True
        elif option.isdigit():
            key, value = "samples", int(option)
            if value < 1:
                raise refuse(f"N is a number of rows, at least 1 (got {option})")
        else:
            try:
                key, value = "fraction", float(option)
            except ValueError:
                raise refuse(f"{option!r} is none of those") from None
            if not 0.0 < value <= 1.0:  # NaN fails this too
                raise refuse(f"FRACTION is a share of the rows, above 0 and at most 1.0 (got {option})")
        if key in entry or (key in ("samples", "fraction") and ({"samples", "fraction"} & entry.keys())):
            raise refuse(f"{option!r} repeats a size or 'balanced' already given")
        entry[key] = value
    return entry


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


DATA_HELP = "hub data set id, directory with train/test files, or one file (CSV, JSONL, Parquet)"
SKIP_HELP = "skip and count bad rows instead of stopping"


def _add_eval_options(parser: argparse.ArgumentParser, n_help: str = "seeded stratified sample size (default 500)") -> None:
    _setting(parser, "--data", "data", help=DATA_HELP + " (default: the data the adapter was trained on)")
    _setting(parser, "--skip-bad-rows", "skip_bad_rows", action="store_true", help=SKIP_HELP)
    _setting(parser, "--n", "n", type=int, help=n_help)
    _setting(parser, "--seed", "seed", type=int, help="sample seed (default 42)")
    _setting(parser, "--batch-size", "batch_size", type=int, help="texts per forward pass (default 64)")


def _add_run_config_options(p: argparse.ArgumentParser) -> None:
    """--config, every run-config flag but --seed and --save-steps, and --set: what train and tune share."""
    p.add_argument("--config", help="YAML preset, e.g. configs/demo.yaml or configs/seed.yaml")
    _setting(p, "--model", "model.name_or_path", help="hub id, local directory, or 'minilm' (the packaged model)")
    _setting(p, "--data", "data.source", help=DATA_HELP)
    _setting(p, "--skip-bad-rows", "data.skip_bad_rows", action="store_true", help=SKIP_HELP)
    _setting(p, "--train-samples", "data.train_samples", type=int, help="seeded stratified subsample of the train split")
    _setting(p, "--val-samples", "data.val_samples", type=int, help="validation rows carved from train")
    _setting(p, "--epochs", "train.epochs", type=float)
    _setting(p, "--max-steps", "train.max_steps", type=int,
             help="run N optimizer steps, fewer or more than --epochs would (which it replaces); -1: all epochs")
    _setting(p, "--lr", "train.learning_rate", type=float, help="peak learning rate (linear decay)")
    _setting(p, "--batch-size", "train.train_batch_size", type=int, help="training batch size (rows per optimizer step)")
    _setting(p, "--micro-batch-size", "train.micro_batch_size", type=int,
             help="rows per forward pass of a length-sorted step (divides --batch-size; default: 4 on CPU, 16 on CUDA)")
    _setting(p, "--pad-to-multiple-of", "train.pad_to_multiple_of", type=int, metavar="N",
             help="pad each batch's length up to a multiple of N tokens; 1: to its longest text (default: auto, "
             "16 on AMX CPUs, 8 on other CPUs, 1 on GPUs)")
    _setting(p, "--extra-train", "data.extra_train", type=_train_source, action="append", metavar="SOURCE[:N|:FRACTION][:balanced]",
             help="another training source (repeatable; replaces the config's list), e.g. "
             "../shared/data/yelp_review_full/open_dataset_train.csv:6000:balanced (N: rows; FRACTION: a share "
             "with a decimal point, 1.0 = all); validation stays from --data")
    _setting(p, "--max-length", "model.max_length", type=int, help="tokens per review (longer ones are cut)")
    _setting(p, "--truncation", "model.truncation", choices=["head", "head+tail"],
             help="how a longer review is cut: its head, or its head and tail (default head)")
    _setting(p, "--head-tokens", "model.head_tokens", type=int,
             help="with head+tail: tokens kept from the start (default a quarter of --max-length)")
    _setting(p, "--class-weights", "train.class_weights", choices=["none", "auto"],
             help="auto: weight the loss by inverse label frequency (for skewed sources)")
    _setting(p, "--label-smoothing", "train.label_smoothing", type=float)
    _setting(p, "--ordinal-weight", "train.ordinal_weight", type=float,
             help="add this times the expected distance in stars to the loss (default 0)")
    _setting(p, "--loraplus-lr-ratio", "train.loraplus_lr_ratio", type=float, metavar="RATIO",
             help="LoRA+: LoRA's B matrices learn at RATIO times --lr (default: one rate)")
    _setting(p, "--no-calibrate", "train.calibrate", action="store_false",
             help="fit no softmax temperature on the validation rows")
    _setting(p, "--report-to", "train.report_to", choices=["none", "tensorboard", "mlflow"],
             help="log the run through the Trainer's integration (needs the [tracking] extra)")
    _setting(p, "--pad-to-max-length", "train.pad_to_max_length", action="store_true",
             help="pad every text to max length (fixed shapes)")
    _setting(p, "--precision", "train.precision", choices=["auto", "fp32", "bf16"])
    _setting(p, "--attention", "model.attention", choices=["auto", "sdpa", "eager"],
             help="attention kernel (auto: eager on CPU, sdpa on CUDA)")
    _setting(p, "--attention-dropout", "model.attention_dropout", type=float,
             help="dropout on attention probabilities (default: the base model's)")
    _setting(p, "--logging-steps", "train.logging_steps", type=int, help="log loss, learning rate and grad norm every N steps")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config field, e.g. --set lora.r=16 --set lora.target_modules=[query,key,value]")


def _add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="fine-tune with LoRA; writes DIR/adapter/ and DIR/run.json")
    _add_run_config_options(p)
    _setting(p, "--seed", "train.seed", type=int)
    _setting(p, "--save-steps", "train.save_steps", type=int, help="checkpoint every N steps so --resume can continue")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in DIR")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished run in DIR (its compare.json and report/ go as training starts, its "
                   "adapter/ and run.json as the new ones are written); with "
                   "--seeds, a seed's run trained with other settings (one with these is reused)")
    p.add_argument("--seeds", type=int, metavar="K", help="train seeds SEED..SEED+K-1 into DIR/seed-S/ and report "
                   "mean ± std of the test metrics in DIR/sweep.json")
    p.add_argument("--compare-n", type=int, help="with --seeds: test reviews each seed is compared on (default 500)")
    p.add_argument("--output-dir", required=True, help="run directory to write")
    p.set_defaults(handler=cmd_train)


def _add_tune_parser(sub) -> None:
    p = sub.add_parser("tune", help="hyperparameter search with Optuna; writes DIR/best.yaml, trials.csv, figures")
    _add_run_config_options(p)  # the base config: every trial starts from it
    p.add_argument("--space", metavar="YAML", help="search space file laid out as a run config, each field a range "
                   "{low, high, log}, a list of choices, one value (fixed) or null (the base config's); "
                   "fields it leaves out keep the default space's; a field a flag or --set gives is not searched")
    _setting(p, "--trials", "trials", type=int, help="finished trials the study should hold in all (default 20)")
    _setting(p, "--timeout", "timeout", type=float, metavar="MIN", help="start no trial after MIN minutes")
    _setting(p, "--storage", "storage", metavar="URL",
             help="SQLAlchemy URL of the study's database (default: sqlite DIR/study.db)")
    _setting(p, "--study-name", "study_name", help="default yelp-lora; an existing study of that name is resumed")
    _setting(p, "--seed", "seed", type=int,
             help="the sampler's seed (default: the config's train.seed; trials train with train.seed, --set train.seed=N)")
    _setting(p, "--prune-startup-trials", "prune_startup_trials", type=int,
             help="trials run whole before the median pruner may stop one (default 3)")
    _setting(p, "--output-dir", "output_dir", required=True, help="the study's directory")
    p.set_defaults(handler=cmd_tune)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yelp-lora", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train_parser(sub)
    _add_tune_parser(sub)

    p = sub.add_parser("calibrate", help="add the int8 activation ranges train now saves to a run trained without them")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by train (adapter/ and run.json)")
    p.add_argument("--data", help="where the run's training data is now, if it has moved (default: the path run.json "
                   "records); its rows must match the fingerprint recorded there")
    p.set_defaults(handler=cmd_calibrate)

    p = sub.add_parser("evaluate", help="accuracy, macro-F1, per-class scores and confusion matrix")
    p.add_argument("--adapter", required=True, help="run directory or adapter directory")
    _add_eval_options(p, n_help="seeded stratified sample size (default: all rows)")
    _setting(p, "--split", "split", choices=["train", "test"], help="default test")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    p.set_defaults(handler=cmd_evaluate, n=None)  # every row unless --n

    p = sub.add_parser("compare", help="untuned baseline against the adapter on the same test sample")
    p.add_argument("--adapter", required=True, help="run directory or adapter directory")
    _add_eval_options(p)
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    _setting(p, "--with-classical", "with_classical", action="store_true",
             help="also TF-IDF + logistic regression, fitted on the adapter's training rows (needs the run dir)")
    p.set_defaults(handler=cmd_compare)

    p = sub.add_parser("report", help="HTML + Markdown report with figures: curves, ordinal metrics, CIs, calibration")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by train (adapter/ and run.json)")
    _add_eval_options(p, n_help="test reviews (seeded stratified sample, default 500)")
    _setting(p, "--resamples", "resamples", type=int, help="bootstrap resamples (default 1000)")
    _setting(p, "--no-classical", "with_classical", action="store_false",
             help="leave out the TF-IDF + logistic regression baseline")
    p.add_argument("--out", help="report directory (default RUN_DIR/report); replaced whole")
    p.add_argument("--compare-json", metavar="FILE",
                   help="also print the comparison and write the JSON `compare --json` writes for the same sample")
    p.set_defaults(handler=cmd_report, with_classical=True)

    p = sub.add_parser("predict", help="star rating and probabilities for review texts")
    _add_model_source(p)
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.add_argument("--input", help="CSV / JSONL / Parquet with a 'text' column, or one review per line")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--batch-size", type=int, help="texts per forward pass (default: 16 on CPU, 128 on CUDA, 1 with ONNX: int8 results then never depend on the other texts)")
    p.add_argument("--output", metavar="OUT", help="stream --input into OUT (.jsonl/.csv/.parquet) in bounded memory")
    p.add_argument("--chunk-size", type=int, help="rows per chunk with --output (the resume unit; default 2048)")
    p.add_argument("--resume", action="store_true", help="with --output: continue an interrupted run (on the backend it began on, with --backend auto)")
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
    _setting(p, "--host", "host", help="bind address (default 127.0.0.1: loopback only)")
    _setting(p, "--port", "port", type=int, help="default 8000")
    _add_key_options(p, "on /v1/*")
    _setting(p, "--allowed-hosts", "allowed_hosts", type=_names, metavar="NAME,NAME",
             help="Host header values served (default: the loopback names when bound to loopback, any otherwise)")
    _setting(p, "--expect-sha256", "expect_sha256", metavar="HEX", help="refuse to start unless the adapter has this sha256")
    _setting(p, "--max-texts", "max_texts", type=int, help="texts per request (default 64)")
    _setting(p, "--max-chars", "max_chars", type=int, help="characters per text (default 20,000)")
    _setting(p, "--max-batch", "max_batch", type=int, help="texts per model batch, >= --max-texts (default 64, or --max-texts if more)")
    _setting(p, "--max-wait-ms", "max_wait_ms", type=float,
             help="how long a batch waits for more requests (default 0: it takes what is waiting when the model is free)")
    _setting(p, "--max-queue", "max_queue", type=int,
             help="texts that may wait for the model; beyond it 503 + Retry-After at once (default 4 x --max-batch)")
    _setting(p, "--request-timeout", "request_timeout", type=float,
             help="seconds a request may wait to be started, then 504 and it is never run (default 30)")
    _setting(p, "--read-timeout", "read_timeout", type=float,
             help="seconds a client has to send its headers, and its body, before it is cut (default 10)")
    _setting(p, "--keep-alive", "keep_alive", type=float, help="seconds an idle connection stays open (default 5)")
    _setting(p, "--http", "http", choices=["auto", "httptools", "h11"],
             help="HTTP/1.1 parser: auto (httptools where installed, else h11), httptools (C) or h11 (pure Python)")
    _setting(p, "--limit-concurrency", "limit_concurrency", type=int,
             help="connections and requests at once; beyond it 503 (default 256)")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("mcp", help="Model Context Protocol server with the classify_review_sentiment tool")
    _add_model_source(p)
    p.add_argument("--transport", choices=["stdio", "http"], default="stdio",
                   help="stdio (the default: an agent starts this process and talks over its stdin/stdout) or http "
                   "(streamable HTTP on --host/--port)")
    _setting(p, "--host", "host", help="with --transport http (default 127.0.0.1)")
    _setting(p, "--port", "port", type=int, help=f"with --transport http (default {MCP_PORT}; endpoint /mcp)")
    _add_key_options(p, "with --transport http")
    p.set_defaults(handler=cmd_mcp)

    p = sub.add_parser("tool-schema", help="print classify_review_sentiment as an OpenAI function-tool schema")
    p.set_defaults(handler=cmd_tool_schema)

    p = sub.add_parser("bench", help="training and prediction throughput: ours against the usual way, side by side")
    _setting(p, "--model", "model", help="minilm, bert-base (its shape, random weights) or a model directory")
    _setting(p, "--adapter", "adapter", help="adapter for the prediction and service bench (default: the one the bench trains)")
    _setting(p, "--samples", "samples", type=int, help="training rows from train.csv, one pass (default 256)")
    _setting(p, "--predict-samples", "predict_samples", type=int, help="test.csv rows to predict (default 1000: all)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the bench runs, figures mean little")
    _setting(p, "--no-service", "service", action="store_false", help="leave out the HTTP service bench")
    _setting(p, "--keep-work", "keep_work", action="store_true",
             help="keep the work directory (training outputs, logs, the adapter the bench trained) instead of removing it")
    _setting(p, "--skip", "skip", action="append", metavar="PATH",
             help="leave out a path: usual, ours-fp32, ours (training); pipeline, merged-fp32, merged-bf16, onnx-fp32, "
             "onnx-int8, openvino-fp32, openvino-bf16 (prediction)")
    _setting(p, "--micro-batch-size", "micro_batch_sizes", action="append", type=int, metavar="N",
             help="also train our path at micro-batches of N (repeat for a sweep; each a divisor of the batch, 16)")
    _setting(p, "--pad-multiple", "pad_multiples", action="append", type=int, metavar="N",
             help="also train our path with each batch padded to a multiple of N tokens (repeat for a sweep)")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    p.set_defaults(handler=cmd_bench)
    return parser


# OS errors that mean a path given was wrong (not a full disk, a network failure or a bug: those keep
# their traceback).
PATH_MISTAKES = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def main(argv: list[str] | None = None) -> int:
    # Tokenisers run inside our own batching; a second thread pool per process only oversubscribes the CPU.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    from yelp_lora.errors import USER_ERRORS, UserError
    from yelp_lora.modeling.base import quiet_upstream_warnings

    quiet_upstream_warnings()
    try:
        for flag in ("json", "compare_json"):
            _check_json_file(getattr(args, flag, None), f"--{flag.replace('_', '-')}")
        if getattr(args, "adapter", None) and getattr(args, "registry", None) and hasattr(args, "alias"):
            raise UserError("--registry names where --version and --alias are looked up: with --adapter it "
                            "would not be used")
        args.handler(args)
        _leave_process_group(finished=True)
    except USER_ERRORS as err:
        print(f"yelp-lora {args.command}: error: {err}", file=sys.stderr)
        return 2
    except PATH_MISTAKES as err:  # a path named on the command line that cannot be used as asked, found late
        print(f"yelp-lora {args.command}: error: {err.strerror}: {err.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"yelp-lora {args.command}: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as a shell tool does
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141
    finally:
        _leave_process_group()
    return 0


def _resume_hint(args: argparse.Namespace) -> str:
    """What an interrupted train or batch predict kept, and how to go on from it."""
    if args.command == "train" and getattr(args, "seeds", None):
        return "; finished seeds are kept: the same command goes on with the others"
    if args.command == "train":
        from yelp_lora.training.recipe import interrupted_checkpoints

        kept = interrupted_checkpoints(Path(args.output_dir)) if getattr(args, "output_dir", None) else []
        if kept:
            return f"; {kept[-1]} is kept: the same command with --resume goes on from it"
        return "; no checkpoint was written (--save-steps N writes one every N steps), so a new run starts over"
    if args.command == "predict" and getattr(args, "output", None):
        from yelp_lora.inference.batch import parts_dir

        if any(parts_dir(Path(args.output)).glob("chunk-*")):
            return f"; finished chunks are kept in {parts_dir(Path(args.output))}: the same command with --resume goes on"
    return ""


def _leave_process_group(*, finished: bool = False) -> None:
    """Under torchrun, leave the gloo group before exit: a group still alive at interpreter exit can abort
    a rank ('terminate called without an active exception') after its work is done. A finished rank first
    waits for the others (rank 0 still writes run.json while rank 1 is done): one that tears its
    connections down while a peer still holds them can abort the same way. A failed rank does not wait."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        if finished:
            distributed.barrier()
        distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
