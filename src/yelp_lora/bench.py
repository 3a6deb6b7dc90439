"""`yelp-lora bench`: our training and prediction paths against the usual way, side by side, in one run.

Every path runs on the same real rows, model and machine, each in its own process so its peak
memory is its own. The paths of each kind take turns in rounds (`PathProcess`, `take_turns`), so a
shared machine's slow spells fall on all of them alike:

- training: transformers' Trainer the way the tutorials run it (every text padded to 256 tokens,
  fp32, random order) against our `train` path (`train.training_arguments` and its Trainer: each
  random step sorted by length into dynamically padded micro-batches, dropout masks drawn 16 bits
  at a time on CPU, bf16 autocast where supported), plus our path in fp32 to show what bf16 adds.
  One pass over the same rows; validation macro-F1 after it, scored identically.
- prediction: `transformers.pipeline("text-classification")` on the unmerged PeftModel with its
  defaults (batch 1, fp32) against our `Predictor` (merged, length-sorted batches, inference
  mode) in fp32, bf16 and ONNX Runtime int8; macro-F1 of each on the same rows.
- the HTTP service (when `yelp_lora.serve` exists) at 1, 8 and 32 concurrent clients.
- the machine's matmul peak (fp32, bf16) and each path's achieved model FLOP/s as a fraction of it.

Model FLOPs are counted per real (unpadded) token, so work spent on padding earns nothing:
    forward, per layer and token: 2*(4h^2 + 2hi) for the Q/K/V/output and FFN matmuls, plus 4nh
    for the attention scores and the weighted sum over a text of n tokens, plus 4rh per LoRA
    projection (training only; merged away at inference); per text, 2h^2 + 10h for the pooler
    and the 5-way head.
    training: the frozen matmuls run forward and once more for the input gradient (2x); the
    attention products need gradients for both operands (3x); LoRA and the head also need
    weight gradients (3x). Layer 0 needs no gradient into its frozen inputs, so this overcounts
    by at most 1/layers of the frozen backward.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from yelp_lora import data as data_stage
from yelp_lora import model as model_stage
from yelp_lora.config import ID2LABEL, LABEL2ID, NUM_LABELS, LoraSettings
from yelp_lora.metrics import headline, predictions_of
from yelp_lora.provenance import environment

BERT_BASE = "bert-base"
TRAIN_PATHS = {
    "usual": "usual: Trainer, pad to 256, fp32",
    "ours-fp32": "ours fp32: sorted micro-batches",
    "ours": "ours: + bf16 autocast",
}
PREDICT_PATHS = {
    "pipeline": "pipeline: unmerged PeftModel, defaults",
    "merged-fp32": "ours fp32: merged, length-sorted",
    "merged-bf16": "ours bf16 weights",
    "onnx-fp32": "ours onnx fp32 (ONNX Runtime, fused)",
    "onnx-int8": "ours onnx-int8 (ONNX Runtime, fused)",
}
# How `predict` and `serve` are told to take each of our prediction paths.
PATH_OPTIONS = {
    "merged-fp32": dict(bf16=False, backend="torch"),
    "merged-bf16": dict(bf16=True, backend="torch"),
    "onnx-fp32": dict(bf16=False, backend="onnx"),
    "onnx-int8": dict(bf16=False, backend="onnx-int8"),
}


@dataclass
class BenchSettings:
    model: str = "minilm"
    adapter: str | None = None  # prediction/service adapter; default: the one our training pass writes
    data: str = "auto"
    samples: int = 256  # training rows: one pass of samples/batch_size steps
    val_samples: int = 200
    predict_samples: int = 1000  # test.csv rows (all of it by default)
    batch_size: int = 16
    predict_batch_size: int | None = None  # None: each path's own default (Predictor's AUTO_BATCH)
    max_length: int = 256
    clients: tuple[int, ...] = (1, 8, 32)
    requests: int = 96  # per client level, one review per request
    matmul_size: int = 2048
    rounds: int = 5  # the paths of each kind take turns: a share of the steps or of the test rows per round
    seed: int = 42
    service: bool = True
    skip: list[str] = field(default_factory=list)  # path ids to leave out, e.g. "pipeline"


QUICK = dict(samples=16, val_samples=8, predict_samples=16, requests=4, matmul_size=512, rounds=2)


# ---------------------------------------------------------------- counting


def _dims(model_config) -> tuple[int, int, int]:
    return model_config.hidden_size, model_config.intermediate_size, model_config.num_hidden_layers


def forward_flops(model_config, lengths: np.ndarray, first_token_last_layer: bool = False) -> float:
    """Model FLOPs of one inference pass over texts of these real lengths (see the module notes).

    `first_token_last_layer`: the last layer's attention output projection and FFN run on the
    first token only (our ONNX graphs); the FLOPs they skip are not counted.
    """
    h, i, layers = _dims(model_config)
    n = np.asarray(lengths, dtype=np.float64)
    per_layer = n * 2 * (4 * h * h + 2 * h * i) + 4 * n * n * h
    last_layer = n * 2 * 3 * h * h + 4 * n * n * h + 2 * (h * h + 2 * h * i) if first_token_last_layer else per_layer
    per_text = (layers - 1) * per_layer + last_layer + 2 * h * h + 2 * h * NUM_LABELS
    return float(per_text.sum())


def training_flops(model_config, lengths: np.ndarray, lora: LoraSettings) -> float:
    """Model FLOPs of one training step over texts of these real lengths (forward and backward)."""
    h, i, layers = _dims(model_config)
    n = np.asarray(lengths, dtype=np.float64)
    frozen = 2 * (4 * h * h + 2 * h * i)
    attention = 4 * n * h
    adapters = 4 * lora.r * h * len(lora.target_modules)
    per_text = layers * n * (2 * frozen + 3 * attention + 3 * adapters) + 2 * 2 * h * h + 3 * 2 * h * NUM_LABELS
    return float(per_text.sum())


def peak_memory() -> dict:
    """This process's peak resident memory (and the GPU's peak allocation), in MiB."""
    memory = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        memory["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return memory


def matmul_peak(dtype: torch.dtype, size: int, device: torch.device, repeats: int = 10) -> float:
    """Best FLOP/s of torch.matmul on two size x size matrices."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = math.inf
    for _ in range(repeats + 1):  # the first call pays for allocation and kernel choice
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def onnx_matmul_peak(size: int, repeats: int = 10) -> float:
    """Best FLOP/s of ONNX Runtime's fp32 MatMul (its own MLAS kernels) on two size x size matrices."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((size, size), dtype=np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])], [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a = np.random.default_rng(1).standard_normal((size, size), dtype=np.float32)
    best = math.inf
    for _ in range(repeats + 1):
        started = time.perf_counter()
        session.run(["c"], {"a": a})
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def measure_peak(size: int, device: torch.device) -> dict[str, float]:
    """The best matmul rate any library here reaches: on CPUs, torch's fp32 GEMM (MKL) can trail
    ONNX Runtime's own (measured 232 against 500 GFLOP/s at 2048x2048 on a 2-core AMD EPYC), so both are tried."""
    fp32 = matmul_peak(torch.float32, size, device)
    if device.type == "cpu" and importlib.util.find_spec("onnxruntime") is not None:
        fp32 = max(fp32, onnx_matmul_peak(size))
    return {"fp32": fp32, "bf16": matmul_peak(torch.bfloat16, size, device)}


# ---------------------------------------------------------------- the base model


def prepare_base(model: str, workdir: Path, seed: int) -> str:
    """'minilm', a directory or hub id as given; 'bert-base' = BertConfig() with seeded random weights."""
    if model != BERT_BASE:
        return model
    from transformers import BertConfig, BertForSequenceClassification

    target = workdir / "bert-base-random"
    if not (target / "config.json").is_file():
        torch.manual_seed(seed)
        config = BertConfig(num_labels=NUM_LABELS, id2label=ID2LABEL, label2id=LABEL2ID)
        BertForSequenceClassification(config).save_pretrained(target)
        # MiniLM ships bert-base-uncased's 30,522-token WordPiece vocabulary: identical token counts.
        model_stage.load_tokenizer(model_stage.MINILM_ALIAS).save_pretrained(target)
    return str(target)


# ---------------------------------------------------------------- workers (each in its own process)


def _train_worker(connection, path: str, base: str, train_split, val_split, settings: BenchSettings, workdir: str) -> None:
    """One training path: build it and tell the parent its step count; run the steps each turn
    asks for (timing only those steps); once told to close, score it and send the result."""
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments, default_data_collator
    from transformers.trainer_callback import PrinterCallback

    from yelp_lora import train as train_stage
    from yelp_lora.config import load_config

    usual = path == "usual"
    config = load_config(
        None,
        {
            "model.name_or_path": base,
            "model.max_length": settings.max_length,
            "train.train_batch_size": settings.batch_size,
            "train.seed": settings.seed,
            "train.precision": "fp32" if path == "ours-fp32" else "auto",
        },
    )
    tokenizer = model_stage.load_tokenizer(base)
    dataset = data_stage.tokenize(train_split, tokenizer, settings.max_length, pad_to_max_length=usual)
    device = model_stage.pick_device()
    if usual:  # the tutorials' model: the library's default attention kernel
        model = model_stage.apply_lora(model_stage.build_classifier(base, settings.seed), config.lora)
    else:
        model = train_stage.build_training_model(config, device)
    short_run = dict(
        max_steps=math.ceil(len(train_split) / settings.batch_size),  # exactly one pass over the rows
        eval_strategy="no", save_strategy="no", logging_strategy="no", disable_tqdm=True,
    )
    output = Path(workdir) / f"train-{path}"
    if usual:
        # The tutorials' form: fixed 256-token rows, fp32, random order, the Trainer's defaults otherwise.
        args = TrainingArguments(
            output_dir=str(output), per_device_train_batch_size=settings.batch_size,
            learning_rate=config.train.learning_rate, seed=settings.seed, use_cpu=device.type != "cuda",
            report_to=[], **short_run,
        )
        collate = default_data_collator
    else:
        args = train_stage.training_arguments(config, output, device, resume_possible=False, **short_run)
        collate = DataCollatorWithPadding(tokenizer)
    batches: list[tuple[int, int]] = []  # (real tokens, computed tokens) of each batch

    def counting_collator(features):
        batch = collate(features)
        batches.append((int(batch["attention_mask"].sum()), int(batch["attention_mask"].numel())))
        return batch

    class Turns(TrainerCallback):
        """Waits for the parent's next turn before a step; times each turn's steps."""

        started = None
        steps_left = 0

        def on_step_begin(self, args, state, control, **kwargs):
            if self.started is None:
                self.steps_left = connection.recv()
                self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.steps_left -= 1
            if self.steps_left == 0 or state.global_step == state.max_steps:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                connection.send((time.perf_counter() - self.started, None))
                self.started = None

    trainer_class = Trainer if usual else train_stage.lora_trainer_class()
    trainer = trainer_class(model=model, args=args, train_dataset=dataset, data_collator=counting_collator, callbacks=[Turns()])
    trainer.remove_callback(PrinterCallback)  # its closing train_runtime would count the waits between turns
    connection.send({"steps": short_run["max_steps"]})
    trainer.train()
    connection.recv()  # the parent's close
    model.eval()
    logits, _ = model_stage.predict_logits(model, tokenizer, val_split.texts, max_length=settings.max_length, batch_size=64)
    if path == "ours":  # the adapter the prediction bench uses when none is given
        meta = train_stage.adapter_meta(config, model_stage.resolve_model_path(base), settings.data)
        train_stage.save_adapter(model, tokenizer, Path(workdir) / "adapter", meta)
    connection.send({
        "path": path,
        "label": TRAIN_PATHS[path],
        "precision": "bf16" if args.bf16 else "fp32",
        "rows": len(train_split),
        "steps": trainer.state.global_step,
        "real_tokens": sum(real for real, _ in batches),
        "computed_tokens": sum(computed for _, computed in batches),
        "model_flops": training_flops(model.get_base_model().config, np.asarray(dataset["length"]), config.lora),
        "val_macro_f1": headline(val_split.labels, predictions_of(logits))["macro_f1"],
        "attention": model.get_base_model().config._attn_implementation,
        **peak_memory(),
    })


def _predict_worker(connection, path: str, adapter_dir: str, settings: BenchSettings) -> None:
    """One prediction path: load and tell the parent; then predict each chunk of texts it sends
    (timing only the prediction) until it sends None; then report peak memory."""
    from yelp_lora.predict import Predictor

    device = model_stage.pick_device()
    started = time.perf_counter()
    if path == "pipeline":
        from transformers import pipeline

        model, tokenizer = model_stage.load_adapter(adapter_dir, merge=False)
        classify = pipeline("text-classification", model=model, tokenizer=tokenizer, device=device)
        # Its only non-default: texts are cut at the model's max_length, as ours are (longer ones would fail).
        def run(batch):
            return np.array([LABEL2ID[out["label"]] for out in classify(batch, truncation=True, max_length=settings.max_length)])
        precision, batch_size, first_token = "fp32", 1, False
    else:
        predictor = Predictor(adapter_dir, batch_size=settings.predict_batch_size, **PATH_OPTIONS[path])

        def run(batch):
            return predictor.probabilities(batch)[0].argmax(axis=1)
        precision = "int8" if predictor.backend == "onnx-int8" else ("bf16" if predictor.bf16 else "fp32")
        batch_size, first_token = predictor.batch_size, getattr(predictor.model, "first_token_last_layer", False)
    load_seconds = time.perf_counter() - started
    connection.send(dict(precision=precision, batch_size=batch_size, load_seconds=load_seconds, first_token_last_layer=first_token))
    warm_up = True  # the first chunk's first texts once more: lazy initialisation and first-call allocations
    while (texts := connection.recv()) is not None:
        if warm_up:
            run(texts[:8])
            warm_up = False
        started = time.perf_counter()
        labels = run(texts)
        if device.type == "cuda":
            torch.cuda.synchronize()
        connection.send((time.perf_counter() - started, labels.tolist()))
    connection.send(peak_memory())


def _run_worker(worker, connection, *args) -> None:
    try:
        worker(connection, *args)
    except Exception as err:  # reported to the parent, which raises it
        connection.send(err)


class PathProcess:
    """One bench path in its own long-lived process, run in turns with the others.

    Its peak memory is its own, and paths that take turns share a shared machine's slow and fast
    spells, which last minutes (measured: the same int8 pass at 150 and at 215 samples/s): paths
    run one after another would each catch a different one. The worker sends what it is once
    ready, answers each turn's work with (seconds, output), and its result when told to close.
    """

    def __init__(self, worker, *args):
        context = get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_run_worker, args=(worker, child, *args), daemon=True)
        self.process.start()
        self.info = self._receive()
        self.seconds: list[float] = []

    def _receive(self):
        message = self.connection.recv()
        if isinstance(message, Exception):
            self.process.join()
            raise message
        return message

    def turn(self, work):
        """Send one turn's work; return its output (the time it took is kept in `seconds`)."""
        self.connection.send(work)
        seconds, output = self._receive()
        self.seconds.append(seconds)
        return output

    def close(self):
        self.connection.send(None)
        result = self._receive()
        self.process.join()
        return result


def take_turns(processes: list[PathProcess], turns: list, before_round=lambda number: None) -> list[list]:
    """Round r gives turns[r] to every process, the order rotating each round; the outputs, per process."""
    outputs = [[] for _ in processes]
    for number, work in enumerate(turns):
        before_round(number)
        for offset in range(len(processes)):
            index = (number + offset) % len(processes)
            outputs[index].append(processes[index].turn(work))
    return outputs


@contextlib.contextmanager
def path_processes():
    """A list to start PathProcesses into; any still running on the way out are killed."""
    started: list[PathProcess] = []
    try:
        yield started
    finally:
        for handle in started:
            if handle.process.is_alive():
                handle.process.kill()


# ---------------------------------------------------------------- the service


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_ready(url: str, timeout_s: float = 300) -> None:
    """Until a `yelp-lora serve` at `url` answers /readyz with 200; SystemExit after timeout_s."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} was not ready after {timeout_s:.0f} s")


def bench_service(adapter_dir: str, texts: list[str], settings: BenchSettings, log_file: Path, path: str) -> dict:
    """Throughput and latency of `yelp-lora serve` on prediction path `path` under 1, 8, 32 concurrent
    clients (one review per request)."""
    if importlib.util.find_spec("yelp_lora.serve") is None:
        return {"available": False, "reason": "yelp_lora.serve is not installed in this build"}
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/classify"
    options = PATH_OPTIONS[path]
    command = [sys.executable, "-m", "yelp_lora", "serve", "--adapter", adapter_dir, "--port", str(port),
               "--backend", options["backend"], *(["--bf16"] if options["bf16"] else [])]
    with open(log_file, "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=max(settings.clients))) as client:
            deadline = time.monotonic() + 300
            while True:  # ready once it answers a real request
                if server.poll() is not None:
                    return {"available": False, "reason": f"server exited with {server.returncode}; see {log_file}"}
                try:
                    if client.post(url, json={"texts": texts[:1]}).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    return {"available": False, "reason": f"server not ready after 300 s; see {log_file}"}
                time.sleep(0.5)

            def one(index: int) -> tuple[float, int]:
                started = time.perf_counter()
                status = client.post(url, json={"texts": [texts[index % len(texts)]]}).status_code
                return time.perf_counter() - started, status

            levels = []
            for clients in settings.clients:
                with ThreadPoolExecutor(clients) as pool:
                    started = time.perf_counter()
                    results = list(pool.map(one, range(settings.requests)))
                    seconds = time.perf_counter() - started
                latencies = np.array([latency for latency, _ in results]) * 1000
                levels.append(
                    {
                        "clients": clients,
                        "requests": settings.requests,
                        "errors": sum(status != 200 for _, status in results),
                        "samples_per_s": settings.requests / seconds,
                        "p50_ms": float(np.percentile(latencies, 50)),
                        "p99_ms": float(np.percentile(latencies, 99)),
                    }
                )
        status = Path(f"/proc/{server.pid}/status")
        peak = next((int(l.split()[1]) / 1024 for l in status.read_text().splitlines() if l.startswith("VmHWM")), None)
        return {"available": True, "path": path, "levels": levels, "server_peak_rss_mib": peak}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# ---------------------------------------------------------------- the run


def bench_training(
    paths: list[str], base: str, train_split, val_split, settings: BenchSettings, workdir: str, measure_round_peak, progress
) -> list[dict]:
    """Every training path over the same rows, one pass, in rounds (a share of the steps each per round)."""
    results = []
    with path_processes() as processes:
        for path in paths:
            progress(f"training: building {TRAIN_PATHS[path]} ...")
            processes.append(PathProcess(_train_worker, path, base, train_split, val_split, settings, workdir))
        steps = processes[0].info["steps"]
        turns = [len(chunk) for chunk in np.array_split(np.arange(steps), min(settings.rounds, steps))]

        def before_round(number: int) -> None:
            measure_round_peak()
            progress(f"training round {number + 1}/{len(turns)}: {turns[number]} steps on each path ...")

        take_turns(processes, turns, before_round)
        # Rows per turn: whole batches, but the pass's last batch may be short.
        turn_rows = np.diff(np.minimum(np.cumsum([0, *turns]) * settings.batch_size, len(train_split)))
        for handle in processes:
            result = handle.close()  # scores validation macro-F1, untimed
            seconds = sum(handle.seconds)
            result.update(
                seconds=seconds, samples_per_s=result["rows"] / seconds, tokens_per_s=result["real_tokens"] / seconds,
                flops_per_s=result["model_flops"] / seconds,
                round_samples_per_s=[int(rows) / spent for rows, spent in zip(turn_rows, handle.seconds)],
            )
            results.append(result)
            progress(f"  {result['label']}: {result['samples_per_s']:.2f} samples/s, val macro-F1 {result['val_macro_f1']:.4f}")
    return results


def bench_prediction(
    paths: list[str], adapter_dir: Path, test_split, settings: BenchSettings, measure_round_peak, progress
) -> list[dict]:
    """Every prediction path on the same test rows, in rounds (one chunk each per round)."""
    from transformers import AutoConfig

    from yelp_lora.evaluate import read_adapter_meta

    meta = read_adapter_meta(adapter_dir)
    tokenizer = model_stage.load_tokenizer(str(adapter_dir))
    input_ids, _ = model_stage.encode(tokenizer, test_split.texts, settings.max_length)
    lengths = np.array([len(ids) for ids in input_ids])
    base_config = AutoConfig.from_pretrained(model_stage.resolve_model_path(meta["base_model_path"]))
    rounds = [index for index in np.array_split(np.arange(len(test_split.texts)), settings.rounds) if len(index)]
    chunks = [[test_split.texts[i] for i in index] for index in rounds]
    prediction = []
    with path_processes() as processes:
        for path in paths:
            progress(f"prediction: loading {PREDICT_PATHS[path]} ...")
            processes.append(PathProcess(_predict_worker, path, str(adapter_dir), settings))

        def before_round(number: int) -> None:
            measure_round_peak()
            progress(f"prediction round {number + 1}/{len(chunks)}: {len(chunks[number])} texts on each path ...")

        labels = take_turns(processes, chunks, before_round)
        for path, handle, predicted in zip(paths, processes, labels):
            seconds = sum(handle.seconds)
            prediction.append({
                "path": path, "label": PREDICT_PATHS[path], **handle.info, "rows": len(test_split.texts),
                "seconds": seconds, "samples_per_s": len(test_split.texts) / seconds,
                "round_samples_per_s": [len(chunk) / spent for chunk, spent in zip(chunks, handle.seconds)],
                **headline(test_split.labels, np.concatenate(predicted)), **handle.close(),
            })
    for result in prediction:
        result["tokens_per_s"] = lengths.sum() / result["seconds"]
        flops = forward_flops(base_config, lengths, first_token_last_layer=result["first_token_last_layer"])
        result["flops_per_s"] = flops / result["seconds"]
        progress(f"  {result['label']}: {result['samples_per_s']:.1f} samples/s, macro-F1 {result['macro_f1']:.4f}")
    return prediction


def run_bench(settings: BenchSettings, progress=print) -> dict:
    load_at_start = os.getloadavg()
    device = model_stage.pick_device()
    workdir = Path(tempfile.mkdtemp(prefix="yelp-lora-bench-"))
    base = prepare_base(settings.model, workdir, settings.seed)
    source = data_stage.resolve_source(settings.data)
    settings.data = source
    train_split, val_split = data_stage.train_val_split(
        data_stage.load_split(source, "train"), settings.val_samples, settings.samples, settings.seed
    )
    test_split = data_stage.sample_split(data_stage.load_split(source, "test"), settings.predict_samples, settings.seed)
    bf16_ok = model_stage.bf16_supported(device)
    onnx_ok = importlib.util.find_spec("onnxruntime") is not None

    progress(f"matmul peak ({settings.matmul_size}^2) ...")
    peaks = [measure_peak(settings.matmul_size, device)]

    def measure_round_peak() -> None:
        peaks.append(measure_peak(settings.matmul_size, device))

    # Without bf16, "ours" is fp32: no separate fp32 path.
    train_paths = [path for path in TRAIN_PATHS if path not in settings.skip and not (path == "ours-fp32" and not bf16_ok)]
    training = []
    if train_paths:
        training = bench_training(
            train_paths, base, train_split, val_split, settings, str(workdir), measure_round_peak, progress
        )

    paths = [
        path for path in PREDICT_PATHS
        if path not in settings.skip and not (path == "merged-bf16" and not bf16_ok)
        and not (PATH_OPTIONS.get(path, {}).get("backend", "torch") != "torch" and not onnx_ok)
    ]
    adapter_dir, prediction = None, []
    if paths:
        adapter = settings.adapter or str(workdir / "adapter")
        if not Path(adapter).exists():
            raise model_stage.ModelError("no adapter to predict with: pass --adapter or keep the 'ours' training path")
        from yelp_lora.evaluate import resolve_adapter_dir

        adapter_dir = resolve_adapter_dir(adapter)
        prediction = bench_prediction(paths, adapter_dir, test_split, settings, measure_round_peak, progress)

    service = {"available": False, "reason": "--no-service"}
    ours = [r for r in prediction if r["path"] in PATH_OPTIONS]
    if settings.service and ours:  # ours is empty without prediction paths, so adapter_dir is set here
        fastest = max(ours, key=lambda r: r["samples_per_s"])["path"]  # served the way it runs fastest offline
        progress(f"service ({PREDICT_PATHS[fastest]}) ...")
        service = bench_service(str(adapter_dir), test_split.texts, settings, workdir / "serve.log", fastest)

    # Measured at the start, before each round and at the end: on a shared machine the
    # best is the closest to what the hardware can do, and the fraction of it the most conservative.
    peaks.append(measure_peak(settings.matmul_size, device))
    peak = {name: max(measured[name] for measured in peaks) for name in peaks[0]}
    for result in training + prediction:
        result["of_peak"] = result["flops_per_s"] / peak["fp32" if result["precision"] == "fp32" else "bf16"]
    by_path = lambda rows, name: next((r for r in rows if r["path"] == name), None)  # noqa: E731
    fp32 = by_path(prediction, "merged-fp32")
    return {
        "settings": asdict(settings),
        "machine": {**environment()["hardware"], "load_average_start": load_at_start, "load_average_end": os.getloadavg()},
        "libraries": environment()["libraries"],
        "base_model": base if settings.model != BERT_BASE else "bert-base shape (BertConfig(), random weights)",
        "adapter": str(adapter_dir) if adapter_dir else None,
        "peak_flops": peak,
        "peak_flops_measured": peaks,
        "training": training,
        "prediction": prediction,
        "service": service,
        "speedup": {
            "training": _ratio(by_path(training, "ours"), by_path(training, "usual")),
            "prediction": _ratio(max(prediction, key=lambda r: r["samples_per_s"], default=None), by_path(prediction, "pipeline")),
        },
        "macro_f1_vs_fp32": {r["path"]: r["macro_f1"] - fp32["macro_f1"] for r in prediction} if fp32 else {},
        "workdir": str(workdir),
    }


def _ratio(ours: dict | None, usual: dict | None) -> float | None:
    return ours["samples_per_s"] / usual["samples_per_s"] if ours and usual else None


def format_report(result: dict) -> str:
    machine = result["machine"]
    device = machine.get("gpu") or f"{machine['cpu']} ({machine['cpu_count']} cores, {machine['torch_threads']} torch threads)"
    peak = result["peak_flops"]
    lines = [
        f"Machine: {device}; load average {machine['load_average_start'][0]:.1f} at start, "
        f"{machine['load_average_end'][0]:.1f} at end",
        f"Model: {result['base_model']}; adapter for prediction: {result['adapter'] or 'none (no prediction path)'}",
        f"Matmul peak: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s "
        f"(best of {len(result['peak_flops_measured'])} measurements: start, before each round, end; "
        "of peak: model FLOP/s over the peak of the path's precision, int8 against bf16)",
        "",
    ]
    settings = result["settings"]
    header = f"{'':40} {'samples/s':>9} {'tokens/s':>9} {'GFLOP/s':>8} {'of peak':>7} {'peak RSS':>9}"
    if result["training"]:
        lines.append(
            f"Training: {settings['samples']} train rows, one pass, batch {settings['batch_size']}, "
            f"in {_count(len(result['training'][0]['round_samples_per_s']), 'round')}, the paths taking turns"
        )
        lines.append(header + f" {'val F1':>7} {'pad %':>6}  rounds: samples/s")
        for row in result["training"]:
            padding = 100 * (1 - row["real_tokens"] / row["computed_tokens"])
            lines.append(_row(row) + f" {row['val_macro_f1']:7.4f} {padding:6.1f}  {_rounds(row)}")
        lines.append("")
    if result["prediction"]:
        rows = result["prediction"][0]["rows"]
        lines.append(
            f"Prediction: {rows} test.csv rows in {_count(len(result['prediction'][0]['round_samples_per_s']), 'round')}, "
            "the paths taking turns on each round's chunk; length-sorted batches of the given size "
            "(the pipeline: one text at a time)"
        )
        lines.append(header + f" {'macro-F1':>8} {'ΔF1 pts':>7} {'batch':>5}  rounds: samples/s")
        for row in result["prediction"]:
            delta = result["macro_f1_vs_fp32"].get(row["path"])
            lines.append(
                _row(row) + f" {row['macro_f1']:8.4f} {100 * delta if delta is not None else float('nan'):7.2f}"
                f" {row['batch_size']:5d}  {_rounds(row)}"
            )
        lines.append("")
    service = result["service"]
    if service.get("available"):
        lines.append(
            f"Service on {PREDICT_PATHS[service['path']]} (one review per request; "
            f"server peak RSS {service['server_peak_rss_mib']:.0f} MiB)"
        )
        lines.append(f"{'':40} {'samples/s':>9} {'p50 ms':>9} {'p99 ms':>8} {'errors':>7}")
        for level in service["levels"]:
            lines.append(
                f"  {level['clients']:>3} concurrent clients{'':16} {level['samples_per_s']:9.1f} "
                f"{level['p50_ms']:9.1f} {level['p99_ms']:8.1f} {level['errors']:7d}"
            )
        offline = next(r["samples_per_s"] for r in result["prediction"] if r["path"] == service["path"])
        lines.append(f"  offline batch prediction, same path{'':5} {offline:9.1f}")
    else:
        lines.append(f"service: not available ({service.get('reason')})")
    lines.append("")
    speed = result["speedup"]
    for name in ("training", "prediction"):
        if speed[name] is not None:
            lines.append(f"Speed-up, {name}: {speed[name]:.2f}x the usual way's samples/s")
    lines.append(f"Work files (the bench's adapter, a bert-base base): {result['workdir']} (delete when done)")
    return "\n".join(lines)


def _row(row: dict) -> str:
    return (
        f"  {row['label']:<38} {row['samples_per_s']:9.2f} {row['tokens_per_s']:9.0f} {row['flops_per_s'] / 1e9:8.1f} "
        f"{100 * row['of_peak']:6.1f}% {row['peak_rss_mib']:6.0f} MiB"
    )


def _rounds(row: dict) -> str:
    return " ".join(f"{rate:.3g}" for rate in row["round_samples_per_s"])


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
