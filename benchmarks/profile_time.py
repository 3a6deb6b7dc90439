"""Where the time goes: one profile of our training steps and of our prediction, split by kind of work.

Usage: python benchmarks/profile_time.py [--config configs/demo.yaml] [--steps 6] [--warmup 2]
           [--adapter runs/demo] [--predict-rows 64] [--backends torch onnx onnx-int8] [--bf16]
           [--json FILE] [--trace-dir DIR]

Training runs our `train` path for the config (recipe.build_training_model, recipe.training_arguments,
the LoRA Trainer with the config's step_mean_loss; each step's rows sorted into micro-batches; bf16
autocast where `precision` picks it) on seeded train.csv rows: `--warmup` steps unprofiled, then
`--steps` steps under torch.profiler (CPU). Prediction runs `Predictor` on `--predict-rows` test.csv
rows (timing only): torch fp32 (and bf16 weights with --bf16) under torch.profiler, `onnx` and
`onnx-int8` under ONNX Runtime's own profiling, each after one unprofiled warm-up pass.

Each region's wall time is split by op self time (no double counting of nested ops):
  matmuls      aten mm/addmm/linear/matmul (projections, FFN, LoRA, pooler, head); ORT MatMul,
               FusedMatMul, Gemm, MatMulInteger, DynamicQuantizeMatMul, MatMulIntegerToFloat
  attention    torch: every op with a 4-D input (only the attention has those: [batch, heads,
               tokens, .] and its [batch, 1, tokens, tokens] mask, built and applied), plus bmm /
               baddbmm (BERT's only batched matmuls are QK^T and PV; the projections are mm/addmm)
               and softmax on 3-D+ inputs; forward and backward. Dropout's random words for the
               attention probabilities are drawn 1-D and count as elementwise. ORT: Attention /
               QAttention / MultiHeadAttention nodes, which include the fused QKV projection.
  elementwise  adds, muls, GELU, layer norms, dropout, casts and copies, loss, optimizer updates;
               ORT: the same, EmbedLayerNormalization and DynamicQuantizeLinear included
  other ops    any op not named above (embedding look-ups, indexing, ...): see the top-10 list
  data         tokenisation, fetching and collation (padding), timed with perf_counter around the
               real calls; ops they run are left out of the op sums
  framework    torch: views, allocation and autograd-node bookkeeping (their self time); ORT:
               each session run minus its kernels
  Python       the rest of the wall: Python, dispatch between ops, the profiler's own cost, and
               for concurrent ONNX sessions idle threads
The profilers slow the region down (ONNX Runtime's records memory figures per kernel); the
unprofiled time of the same work is printed beside it. Torch ops are timed on the thread that
calls them, so their intra-op threads are inside their self time; concurrent ONNX Runtime sessions
are shown as each thread's share (thread time / threads).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile, record_function, schedule

from yelp_lora.bench.peaks import instruction_sets
from yelp_lora.config import load_config
from yelp_lora.data.sources import load_split
from yelp_lora.util.provenance import environment

CATEGORIES = {
    "matmul": "matmuls",
    "attention": "attention",
    "elementwise": "elementwise & normalisation",
    "other": "other ops",
    "data": "data handling",
    "framework": "framework",
    "python": "Python, dispatch, profiler",
}
DATA_SCOPE = "benchmarks/profile_time.py: data handling"  # torch ops under this annotation are data handling's

# aten op names with the "aten::" prefix and leading/trailing underscores removed.
TORCH_MATMULS = {"mm", "addmm", "linear", "matmul", "addmv", "mv", "dot", "addmm_activation"}
TORCH_ATTENTION = {"bmm", "baddbmm"}
TORCH_SOFTMAX = {"softmax", "softmax_backward_data"}
TORCH_ELEMENTWISE = {
    "add", "sub", "rsub", "mul", "div", "neg", "abs", "pow", "sqrt", "rsqrt", "exp", "log", "reciprocal", "sign",
    "tanh", "tanh_backward", "gelu", "gelu_backward", "layer_norm", "native_layer_norm", "native_layer_norm_backward",
    "dropout", "native_dropout", "native_dropout_backward", "bernoulli", "random", "uniform",
    "to", "to_copy", "copy", "clone", "contiguous", "fill", "zero", "zeros", "zeros_like", "ones_like", "full",
    "where", "masked_fill", "ge", "gt", "le", "lt", "eq", "ne", "clamp", "clamp_min", "clamp_max", "lerp",
    "addcmul", "addcdiv", "sum", "mean", "norm", "linalg_vector_norm", "amax", "max", "cat", "stack",
    "log_softmax", "log_softmax_backward_data", "cross_entropy_loss", "nll_loss", "nll_loss_nd",
    "nll_loss_forward", "nll_loss_backward", "isinf", "isnan", "isfinite", "logical_or", "logical_and", "any",
}
TORCH_ELEMENTWISE_PREFIXES = ("foreach_", "fused_")  # the optimizer's multi-tensor updates
TORCH_FRAMEWORK = {
    "empty", "empty_strided", "empty_like", "view", "unsafe_view", "reshape", "as_strided", "t", "transpose",
    "permute", "expand", "expand_as", "detach", "alias", "unsqueeze", "squeeze", "slice", "select", "split",
    "chunk", "unbind", "narrow", "flatten", "resolve_conj", "resolve_neg", "lift_fresh", "result_type",
    "set", "numpy_T", "item", "local_scalar_dense", "is_nonzero",
}

ORT_MATMULS = {
    "MatMul", "FusedMatMul", "Gemm", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm",
    "MatMulNBits",
}
ORT_ATTENTION = {"Attention", "QAttention", "MultiHeadAttention", "Softmax"}
ORT_ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Erf", "Tanh", "Gelu", "BiasGelu", "FastGelu", "QuickGelu",
    "LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization", "EmbedLayerNormalization",
    "QEmbedLayerNormalization",
    "ReduceMean", "Cast", "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear", "Where", "Equal",
}


def torch_category(name: str, shapes: list) -> str:
    op = name.removeprefix("aten::").strip("_")
    if name.startswith("autograd::") or name.endswith(("Backward0", "Backward1")) or "AccumulateGrad" in name:
        return "framework"
    if op in TORCH_FRAMEWORK:
        return "framework"
    dims = [len(shape) for shape in shapes if isinstance(shape, list)]
    if op in TORCH_ATTENTION or 4 in dims or (op in TORCH_SOFTMAX and max(dims, default=0) >= 3):
        return "attention"
    if op in TORCH_MATMULS or ("mkldnn" in op and ("mm" in op or "matmul" in op or "linear" in op)):
        return "matmul"
    if op in TORCH_ELEMENTWISE or op in TORCH_SOFTMAX or op.startswith(TORCH_ELEMENTWISE_PREFIXES):
        return "elementwise"
    return "other"


def ort_category(op_type: str) -> str:
    if op_type in ORT_MATMULS:
        return "matmul"
    if op_type in ORT_ATTENTION:
        return "attention"
    return "elementwise" if op_type in ORT_ELEMENTWISE else "other"


class DataTimer:
    """perf_counter seconds spent in data handling, by kind; thread-safe (ONNX batches run on several threads)."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def reset(self) -> None:
        self.seconds.clear()

    @contextlib.contextmanager
    def timed(self, kind: str):
        started = time.perf_counter()
        try:
            with record_function(DATA_SCOPE):
                yield
        finally:
            spent = time.perf_counter() - started
            with self._lock:
                self.seconds[kind] += spent


class TimedTokenizer:
    """The predictor's own tokenizer, its tokenisation timed as data handling."""

    def __init__(self, tokenizer, timer: DataTimer):
        self._tokenizer, self._timer = tokenizer, timer

    def __call__(self, *args, **kwargs):
        with self._timer.timed("tokenisation"):
            return self._tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def time_data_handling(predictor, timer: DataTimer) -> None:
    """From now on, the predictor's tokenisation and every batch's padding are timed as data handling."""
    from yelp_lora.data.tokenize import pad
    from yelp_lora.modeling import forward

    def timed_pad(*args, **kwargs):
        with timer.timed("collation (padding)"):
            return pad(*args, **kwargs)

    predictor.tokenizer = TimedTokenizer(predictor.tokenizer, timer)
    forward.pad = timed_pad  # what batched_logits calls


def torch_op_times(prof) -> tuple[dict[str, float], list[dict]]:
    """(seconds of op self time per category, per-op rows), leaving out user annotations' own time
    and everything run under DATA_SCOPE (timed as data handling instead)."""
    by_category: dict[str, float] = defaultdict(float)
    ops: dict[str, dict] = {}
    for event in prof.events():
        if event.name == DATA_SCOPE or event.is_user_annotation or event.name.startswith("ProfilerStep#"):
            continue
        parent = event.cpu_parent
        while parent is not None and parent.name != DATA_SCOPE:
            parent = parent.cpu_parent
        if parent is not None:
            continue
        category = torch_category(event.name, event.input_shapes or [])
        seconds = event.self_cpu_time_total / 1e6
        by_category[category] += seconds
        # Named with the op that called it: a copy_ under aten::to is a cast, under aten::clone a layout change.
        caller = event.cpu_parent.name if event.cpu_parent and not event.cpu_parent.is_user_annotation else ""
        op = f"{event.name} < {caller}" if caller else event.name
        row = ops.setdefault(f"{op} [{category}]", {"op": op, "category": category, "calls": 0, "s": 0.0})
        row["calls"] += 1
        row["s"] += seconds
    return by_category, list(ops.values())


def region(name: str, wall: float, *, threads: int, ops: dict[str, float], op_rows: list[dict],
           data: dict[str, float], framework_extra: float = 0.0, per: int = 1, unit: str = "call", **facts) -> dict:
    """One profiled region as JSON: each category's time per `unit` (thread time / threads) and share of the wall."""
    budget = wall * threads  # concurrent ONNX sessions: every thread's time is the region's
    seconds = {key: ops.get(key, 0.0) for key in ("matmul", "attention", "elementwise", "other")}
    seconds["data"] = sum(data.values())
    seconds["framework"] = ops.get("framework", 0.0) + framework_extra
    seconds["python"] = budget - sum(seconds.values())

    def ms(value: float) -> float:
        return round(value / threads / per * 1000, 3)

    top = sorted(op_rows, key=lambda row: -row["s"])[:10]
    return {
        "region": name, "unit": unit, "units": per, "threads": threads, "wall_ms_per_unit": ms(budget),
        "categories_ms_per_unit": {key: ms(value) for key, value in seconds.items()},
        "categories_percent": {key: round(100 * value / budget, 2) for key, value in seconds.items()},
        "data_ms_per_unit": {key: ms(value) for key, value in data.items()},
        "top_ops": [
            {"op": row["op"], "category": row["category"], "calls": row["calls"], "ms_per_unit": ms(row["s"]),
             "percent": round(100 * row["s"] / budget, 2)}
            for row in top
        ],
        **facts,
    }


def profile_training(args, trace_dir: Path | None) -> dict:
    from transformers import DataCollatorWithPadding, TrainerCallback

    from yelp_lora.modeling.base import load_tokenizer
    from yelp_lora.modeling.hardware import pick_device
    from yelp_lora.data.tokenize import tokenize
    from yelp_lora.training.recipe import build_training_model, class_weights, step_batches, training_arguments
    from yelp_lora.training.trainer import StepSortedSampler, lora_trainer_class, step_mean_loss

    config = load_config(args.config, {})  # what `yelp-lora train --config` reads
    train_config = config.train
    device = pick_device()
    micro_batch, accumulation = step_batches(train_config, device)
    steps = args.warmup + args.steps
    rows_needed = micro_batch * accumulation * steps
    train_csv = load_split(config.data.source, "train")
    rows = train_csv.select(np.random.default_rng(train_config.seed).choice(len(train_csv), rows_needed, replace=False))
    tokenizer = load_tokenizer(config.model.name_or_path)
    started = time.perf_counter()
    dataset = tokenize(rows, tokenizer, config.model.max_length, config.model.kept_head, train_config.pad_to_max_length)
    tokenise_seconds = time.perf_counter() - started
    started = time.perf_counter()
    list(StepSortedSampler(dataset["length"], micro_batch, accumulation, train_config.seed))  # the epoch's draw and sort, once per epoch
    sort_seconds = time.perf_counter() - started

    timer = DataTimer()
    # The profiler starts with the run and traces the last warm-up step unrecorded: the first step
    # it traces is slowed by its own start-up (12.2 s against its neighbours' 3.1 s in a trial on a
    # busy machine), which its warm-up phase absorbs.
    profiler = profile(
        activities=[ProfilerActivity.CPU], record_shapes=True,
        schedule=schedule(wait=args.warmup - 1, warmup=1, active=args.steps, repeat=1),
    )
    step_walls: list[float] = []
    window: dict[str, float] = {}

    class ProfiledTrainer(lora_trainer_class()):
        def get_batch_samples(self, epoch_iterator, num_batches, device):
            with timer.timed("fetch and collate"):  # a step's micro-batches: drawn, fetched, collated
                return super().get_batch_samples(epoch_iterator, num_batches, device)

    class ProfileWindow(TrainerCallback):
        """Times every step; profiles from the end of the last warm-up step to the end of the last step."""

        def on_train_begin(self, args_, state, control, **kwargs):
            profiler.start()
            window["last"] = time.perf_counter()

        def on_step_end(self, args_, state, control, **kwargs):
            now = time.perf_counter()
            step_walls.append(now - window["last"])
            if state.global_step == steps:
                window["wall"] = now - window["start"]
            profiler.step()
            if state.global_step == args.warmup:  # recording starts with the next step
                timer.reset()
                window["start"] = time.perf_counter()
            window["last"] = time.perf_counter()

        def on_train_end(self, args_, state, control, **kwargs):
            profiler.stop()

    weights = class_weights(rows.labels) if train_config.class_weights == "auto" else None
    with tempfile.TemporaryDirectory(prefix="profile-train-") as workdir:
        trainer_args = training_arguments(
            config, Path(workdir), device, resume_possible=False, max_steps=steps, eval_strategy="no",
            save_strategy="no", logging_strategy="no", disable_tqdm=True, report_to=[],
        )
        trainer = ProfiledTrainer(
            model=build_training_model(config, device), args=trainer_args, train_dataset=dataset,
            processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
            compute_loss_func=step_mean_loss(weights, train_config.label_smoothing, train_config.ordinal_weight),
            callbacks=[ProfileWindow()],
        )
        trainer.train()
    if trace_dir:
        profiler.export_chrome_trace(str(trace_dir / "train.json"))
    ops, op_rows = torch_op_times(profiler)
    batch = micro_batch * accumulation
    return region(
        f"training: {args.config}, {'bf16 autocast' if trainer_args.bf16 else 'fp32'}", window["wall"], threads=1,
        ops=ops, op_rows=op_rows, data=dict(timer.seconds), per=args.steps, unit="step",
        rows_per_step=batch, micro_batch=micro_batch, micro_batches_per_step=accumulation,
        precision="bf16" if trainer_args.bf16 else "fp32", warmup_steps=args.warmup,
        step_wall_ms=[round(seconds * 1000, 1) for seconds in step_walls],
        # Done once before the steps: each step's share of it, outside the profiled wall. With few
        # rows the data set's fixed cost (datasets.map) weighs more than in a full epoch.
        rows_tokenised=len(rows),
        before_the_steps_ms_per_step={
            "tokenisation": round(tokenise_seconds / len(rows) * batch * 1000, 3),
            "length sorting (the epoch's draw and sort)": round(sort_seconds / len(rows) * batch * 1000, 3),
        },
    )


def profile_prediction_torch(adapter: str, texts: list[str], bf16: bool, trace_dir: Path | None) -> dict:
    from yelp_lora.inference.predictor import Predictor

    predictor = Predictor(adapter, backend="torch", bf16=bf16)
    timer = DataTimer()
    time_data_handling(predictor, timer)
    predictor.probabilities(texts)  # warm-up
    started = time.perf_counter()
    predictor.probabilities(texts)
    unprofiled = time.perf_counter() - started
    timer.reset()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        started = time.perf_counter()
        predictor.probabilities(texts)
        wall = time.perf_counter() - started
    precision = "bf16 weights" if predictor.bf16 else "fp32"
    if trace_dir:
        prof.export_chrome_trace(str(trace_dir / f"predict-torch-{precision.split()[0]}.json"))
    ops, op_rows = torch_op_times(prof)
    return region(
        f"prediction: torch {precision}", wall, threads=1, ops=ops, op_rows=op_rows, data=dict(timer.seconds),
        unit=f"{len(texts)} rows", backend="torch", precision=precision, batch_size=predictor.batch_size,
        unprofiled_wall_ms=round(unprofiled * 1000, 1),
    )


def ort_profile(files: list[str]) -> tuple[dict[str, float], list[dict], float, int]:
    """From ONNX Runtime profile files, the profiled pass's (kernel seconds per category, per-op rows,
    seconds of session runs outside their kernels, threads that ran sessions). The first half of
    each session's runs were the warm-up pass (the same batches), and are left out."""
    by_category: dict[str, float] = defaultdict(float)
    ops: dict[str, dict] = {}
    run_seconds = kernel_seconds = 0.0
    threads = set()
    for file in files:
        events = json.loads(Path(file).read_text())
        runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                      key=lambda e: e["ts"])
        warmup = runs[: len(runs) // 2]
        after = max((e["ts"] + e["dur"] for e in warmup), default=0)
        for run in runs[len(warmup):]:
            run_seconds += run["dur"] / 1e6
            threads.add(run["tid"])
        for event in events:
            if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time") or event["ts"] < after:
                continue
            op_type = event["args"]["op_name"]
            category = ort_category(op_type)
            seconds = event["dur"] / 1e6
            by_category[category] += seconds
            kernel_seconds += seconds
            row = ops.setdefault(op_type, {"op": op_type, "category": category, "calls": 0, "s": 0.0})
            row["calls"] += 1
            row["s"] += seconds
    return by_category, list(ops.values()), run_seconds - kernel_seconds, len(threads)


def profile_prediction_onnx(adapter: str, texts: list[str], backend: str, trace_dir: Path) -> dict:
    from yelp_lora.inference.onnx_backend import OnnxClassifier, exported_model
    from yelp_lora.inference.predictor import Predictor

    predictor = Predictor(adapter, backend=backend)
    predictor.probabilities(texts)  # warm-up
    started = time.perf_counter()
    predictor.probabilities(texts)
    unprofiled = time.perf_counter() - started
    # The same exported file (cached by the adapter's bytes), in sessions that record ONNX Runtime's profile.
    classifier = OnnxClassifier(exported_model(predictor.adapter_dir, backend),
                                profile_prefix=str(trace_dir / f"predict-{backend}"))
    predictor.model = classifier
    timer = DataTimer()
    time_data_handling(predictor, timer)
    predictor.probabilities(texts)  # warm-up of the profiling sessions
    timer.reset()
    started = time.perf_counter()
    predictor.probabilities(texts)
    wall = time.perf_counter() - started
    sessions = {classifier, classifier.concurrent()}
    files = [session.session.end_profiling() for session in sessions]
    ops, op_rows, session_overhead, threads = ort_profile(files)
    return region(
        f"prediction: {backend} (ONNX Runtime)", wall, threads=max(threads, 1), ops=ops, op_rows=op_rows,
        data=dict(timer.seconds), framework_extra=session_overhead, unit=f"{len(texts)} rows", backend=backend,
        batch_size=predictor.batch_size, unprofiled_wall_ms=round(unprofiled * 1000, 1),
        ort_profile_files=[str(Path(file).name) for file in files],
    )


def print_region(result: dict) -> None:
    unit, threads = result["unit"], result["threads"]
    print(f"\n{result['region']}")
    shared = f", each figure a thread's share: {threads} threads ran at once" if threads > 1 else ""
    line = f"  wall {result['wall_ms_per_unit']:.1f} ms per {unit}{shared}"
    if "unprofiled_wall_ms" in result:
        line += f" (unprofiled: {result['unprofiled_wall_ms']:.1f} ms)"
    if "step_wall_ms" in result:
        walls = result["step_wall_ms"]
        line += (f"; {result['rows_per_step']} rows per step in {result['micro_batches_per_step']} micro-batches of "
                 f"{result['micro_batch']}; step walls ms, {result['warmup_steps']} warm-up first: "
                 + " ".join(f"{wall:.0f}" for wall in walls))
    print(line)
    print(f"  {'':48} {'ms/' + unit:>14} {'% of wall':>10}")
    for key, label in CATEGORIES.items():
        print(f"  {label:48} {result['categories_ms_per_unit'][key]:14.2f} {result['categories_percent'][key]:10.1f}")
        if key == "data":
            for kind, value in result["data_ms_per_unit"].items():
                print(f"    {kind:46} {value:14.2f}")
    for kind, value in result.get("before_the_steps_ms_per_step", {}).items():
        print(f"  not in the wall, once for the {result['rows_tokenised']} rows before the steps: {kind}: "
              f"{value:.2f} ms per step's share")
    print(f"  top 10 ops by self time{' (thread time / threads)' if threads > 1 else ''}:")
    for row in result["top_ops"]:
        print(f"    {row['op'][:60]:60} {row['category']:12} {row['calls']:7d} calls {row['ms_per_unit']:10.2f} ms "
              f"{row['percent']:6.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=6, help="training steps profiled, after the warm-up")
    parser.add_argument("--warmup", type=int, default=2, help="training steps run first, unprofiled")
    parser.add_argument("--adapter", default="runs/demo", help="run directory whose adapter predicts")
    parser.add_argument("--predict-rows", type=int, default=64, help="test.csv rows predicted (timing only)")
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx", "onnx-int8"],
                        choices=["torch", "onnx", "onnx-int8"])
    parser.add_argument("--bf16", action="store_true", help="also profile torch prediction with bf16 weights")
    parser.add_argument("--no-train", action="store_true", help="profile prediction only")
    parser.add_argument("--json", help="write every region, the machine and the command to this file")
    parser.add_argument("--trace-dir", help="keep the torch (Chrome trace) and ONNX Runtime profiles here")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 1:  # the first step carries one-time costs: never profiled
        parser.error("--steps and --warmup must be at least 1")
    # test.csv only for timing: its first rows, whose predictions are never looked at.
    texts = load_split("auto", "test").texts[: args.predict_rows]

    machine = {**environment(), "instruction_sets": instruction_sets()}  # hardware names the CPU and torch's threads
    hardware = machine["hardware"]
    print(f"{hardware['cpu']}, {hardware['cpu_count']} CPUs, torch {torch.__version__} on {torch.get_num_threads()} "
          f"threads; instructions: {machine['instruction_sets']}")
    with contextlib.ExitStack() as stack:
        trace_dir = Path(args.trace_dir) if args.trace_dir else None
        if trace_dir:
            trace_dir.mkdir(parents=True, exist_ok=True)
        # ONNX Runtime always writes its profile to a file: kept in --trace-dir, else in a scratch directory.
        ort_dir = trace_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="profile-ort-")))
        regions = []
        if not args.no_train:
            regions.append(profile_training(args, trace_dir))
            print_region(regions[-1])
        for backend in args.backends:
            for bf16 in ([False, True] if backend == "torch" and args.bf16 else [False]):
                if backend == "torch":
                    regions.append(profile_prediction_torch(args.adapter, texts, bf16, trace_dir))
                else:
                    regions.append(profile_prediction_onnx(args.adapter, texts, backend, ort_dir))
                print_region(regions[-1])
    if args.json:
        record = {"command": shlex.join([sys.executable, *sys.argv]), "machine": machine, "regions": regions}
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
