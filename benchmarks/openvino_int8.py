"""Does OpenVINO's int8 beat ONNX Runtime's on this CPU? The question issue 15 asks before an
`--backend openvino-int8` is built: measured side by side, in rounds, on the same reviews.

Usage: python benchmarks/openvino_int8.py [--adapter runs/demo] [--rows 300] [--calibration 200]
           [--rounds 5] [--json FILE]

Needs the `[openvino]` extra and NNCF (`pip install nncf`, OpenVINO's quantization library).

Paths, each predicting the same `--rows` train.csv reviews once per round, the order rotating:
  ort fp32        what `predict --backend onnx` runs (the fused graph, one review per pass, one
                  one-thread session per core side by side); its answers are the reference
  ort int8        `--backend onnx-int8`: the same graph, int8 weights, per-tensor dynamic int8 activations
  ov fp32         `--backend openvino`: the fused ONNX graph compiled by OpenVINO, one stream
  ov w8 ...       NNCF `compress_weights` (int8 per-channel weights, no data needed); OpenVINO's CPU
                  plugin quantizes activations at run time in groups of 32 values of one token
  ov static ...   NNCF `quantize` (model_type TRANSFORMER: SmoothQuant, fast bias correction),
                  activation scales calibrated on `--calibration` other train.csv reviews
The OpenVINO int8 models are converted from the merged torch model (NNCF cannot read the fused
ONNX graph's Microsoft-domain kernels), with the last layer cut to the [CLS] token as our ONNX
graphs are (a forward pre-hook on its attention output). `sN bM`: N streams (one thread each when
N equals the cores) fed by an `AsyncInferQueue`, length-sorted batches of M reviews.

For each path: samples/s per round and their median; predicted classes that differ from ort fp32's;
the largest probability difference from ort fp32; and, for batches of more than one review, the
largest probability difference from the same model run one review at a time (0 = batch-invariant).
Every row comes from train.csv (seeded: calibration rows first, then the timed rows), never test.csv.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from yelp_lora.artifacts import tokenizer_source
from yelp_lora.bench.peaks import instruction_sets
from yelp_lora.data.sources import load_split
from yelp_lora.data.tokenize import encode, pad
from yelp_lora.inference.onnx_backend import OnnxClassifier, exported_model
from yelp_lora.inference.openvino_backend import OpenVinoClassifier
from yelp_lora.modeling.base import load_adapter, load_tokenizer
from yelp_lora.modeling.forward import batched_logits, softmax
from yelp_lora.util.provenance import environment


class Logits(torch.nn.Module):
    """The merged classifier as (input_ids, attention_mask) -> logits, its last layer cut to [CLS]."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        last = model.base_model.encoder.layer[-1]
        # BertSelfOutput(attention_output, residual): from here on the layer needs only the first token.
        last.attention.output.register_forward_pre_hook(lambda _module, args: tuple(a[:, :1] for a in args))

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def openvino_models(adapter: Path, token_ids: list[list[int]], calibration: list[list[int]], pad_id: int):
    import nncf
    import openvino as ov

    model, _ = load_adapter(adapter, merge=True)
    model.set_attn_implementation("sdpa")  # converted to OpenVINO's fused ScaledDotProductAttention
    model.eval()
    first_two = {k: torch.from_numpy(v) for k, v in pad(token_ids[:2], pad_id).items()}
    with torch.no_grad():
        reference = model(**first_two).logits
        wrapped = Logits(model)  # from here on the model's last layer runs on [CLS] only
        assert torch.allclose(wrapped(**first_two), reference, atol=1e-5), "the [CLS] cut changed the logits"
    example = {k: torch.from_numpy(v) for k, v in pad([token_ids[0], token_ids[1][:20]], pad_id).items()}

    def convert():
        return ov.convert_model(wrapped, example_input=example, input=[
            ("input_ids", [-1, -1], ov.Type.i64), ("attention_mask", [-1, -1], ov.Type.i64)])

    started = time.perf_counter()
    weights_int8 = nncf.compress_weights(convert(), mode=nncf.CompressWeightsMode.INT8_SYM)
    print(f"NNCF weight compression: {time.perf_counter() - started:.1f} s", flush=True)
    started = time.perf_counter()
    static_int8 = nncf.quantize(convert(), nncf.Dataset([pad([ids], pad_id) for ids in calibration]),
                                model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration))
    print(f"NNCF static quantization ({len(calibration)} reviews): {time.perf_counter() - started:.1f} s", flush=True)
    return weights_int8, static_int8


class AsyncPath:
    """An OpenVINO model compiled with `streams` streams over every core, fed length-sorted batches."""

    def __init__(self, model, streams: int, batch: int, pad_id: int):
        import openvino as ov

        compiled = ov.Core().compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": torch.get_num_threads(), "NUM_STREAMS": streams})
        self.queue = ov.AsyncInferQueue(compiled, streams)
        self.batch, self.pad_id = batch, pad_id

    def __call__(self, token_ids: list[list[int]]) -> np.ndarray:
        logits = np.zeros((len(token_ids), 5), np.float32)

        def store(request, index):
            logits[index] = request.get_output_tensor(0).data

        self.queue.set_callback(store)
        order = np.argsort([-len(ids) for ids in token_ids], kind="stable")
        for start in range(0, len(order), self.batch):
            index = order[start : start + self.batch]
            self.queue.start_async(pad([token_ids[i] for i in index], self.pad_id), index)
        self.queue.wait_all()
        return logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", default="runs/demo", help="run or adapter directory")
    parser.add_argument("--rows", type=int, default=300, help="train.csv reviews timed each round")
    parser.add_argument("--calibration", type=int, default=200, help="other train.csv reviews that calibrate static int8")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the figures, the machine and the command to this file")
    args = parser.parse_args()

    import openvino as ov

    adapter = Path(args.adapter)
    adapter = adapter / "adapter" if (adapter / "adapter").is_dir() else adapter
    card = json.loads((adapter / "yelp_lora.json").read_text(encoding="utf-8"))
    tokenizer = load_tokenizer(tokenizer_source(adapter))
    texts = load_split("auto", "train").texts
    order = np.random.default_rng(args.seed).permutation(len(texts))
    calibration_texts = [texts[i] for i in order[: args.calibration]]
    timed_texts = [texts[i] for i in order[args.calibration : args.calibration + args.rows]]
    cut = dict(max_length=card["max_length"], head=card.get("head_tokens"))
    token_ids, _ = encode(tokenizer, timed_texts, **cut)
    calibration, _ = encode(tokenizer, calibration_texts, **cut)
    pad_id = tokenizer.pad_token_id

    weights_int8, static_int8 = openvino_models(adapter, token_ids, calibration, pad_id)
    ort_fp32 = OnnxClassifier(exported_model(adapter, "onnx"))
    ort_int8 = OnnxClassifier(exported_model(adapter, "onnx-int8"))
    ov_fp32 = OpenVinoClassifier(exported_model(adapter, "onnx"))
    cores = torch.get_num_threads()
    paths = {
        "ort fp32": lambda ids: batched_logits(ort_fp32, tokenizer, ids, batch_size=1),
        "ort int8": lambda ids: batched_logits(ort_int8, tokenizer, ids, batch_size=1),
        "ov fp32": lambda ids: batched_logits(ov_fp32, tokenizer, ids, batch_size=1),
    }
    for name, model in (("w8", weights_int8), ("static", static_int8)):
        for streams, batch in ((1, 1), (cores, 1), (cores, 4), (cores, 16)):
            paths[f"ov {name} s{streams} b{batch}"] = AsyncPath(model, streams, batch, pad_id)

    rates: dict[str, list[float]] = {name: [] for name in paths}
    probabilities: dict[str, np.ndarray] = {}
    names = list(paths)
    for round_ in range(args.rounds):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            started = time.perf_counter()
            logits = paths[name](token_ids)
            rates[name].append(len(token_ids) / (time.perf_counter() - started))
            probabilities[name] = softmax(logits)
        print(f"round {round_ + 1} of {args.rounds} done", flush=True)

    reference = probabilities["ort fp32"]
    rows = []
    print(f"\n{len(token_ids)} train.csv reviews, {args.rounds} rounds, {cores} threads; "
          f"OpenVINO {ov.__version__}, CPU capabilities {ov.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES')}")
    print(f"{'path':24s} {'samples/s':>9s}  {'flips':>5s}  {'max |dp|':>8s}  {'vs b1':>7s}   rounds")
    for name in names:
        batched = re.search(r" b\d+$", name) and not name.endswith(" b1")
        one_at_a_time = re.sub(r" b\d+$", " b1", name) if batched else None
        row = {
            "path": name,
            "samples_per_s": round(statistics.median(rates[name]), 2),
            "rounds": [round(r, 1) for r in rates[name]],
            "flips_vs_ort_fp32": int((probabilities[name].argmax(1) != reference.argmax(1)).sum()),
            "max_abs_dp_vs_ort_fp32": float(np.abs(probabilities[name] - reference).max()),
            "max_abs_dp_vs_batch_1": (
                float(np.abs(probabilities[name] - probabilities[one_at_a_time]).max()) if one_at_a_time else 0.0),
        }
        rows.append(row)
        print(f"{name:24s} {row['samples_per_s']:9.1f}  {row['flips_vs_ort_fp32']:5d}  "
              f"{row['max_abs_dp_vs_ort_fp32']:8.4f}  {row['max_abs_dp_vs_batch_1']:7.4f}   "
              + " ".join(f"{r:.1f}" for r in row["rounds"]))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": shlex.join([sys.executable, *sys.argv]),
            "environment": environment(),
            "instruction_sets": instruction_sets(),
            "openvino": ov.__version__,
            "rows": len(token_ids),
            "paths": rows,
        }, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
