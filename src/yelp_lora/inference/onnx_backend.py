"""ONNX Runtime inference for a merged adapter: fp32, or int8 with dynamic quantization.

The merged model is exported once per adapter, base model and library versions into a cache
directory (keyed by the adapter's bytes and the base's hash; each file's sha256 recorded at export
and checked at every load, so a cached file changed since is rebuilt, never run),
its BERT blocks fused into ONNX Runtime's kernels (Attention, EmbedLayerNormalization, BiasGelu;
residual + LayerNorm stay an Add and a standard LayerNormalization, measured faster), its last layer cut to the one token the
classifier reads; for int8, activations smoothed into the weights (SmoothQuant) with the ranges the
adapter carries, and on AMX CPUs each attention as int8 query, key and value matmuls before ONNX's
standard Attention (measured faster there than ONNX Runtime's QAttention). It is served by an
`OnnxClassifier` that `modeling.forward.predict_logits` drives like a transformers model, so
batching, length sorting and truncation stay in one place.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import time
import warnings
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from yelp_lora.artifacts import INT8_CALIBRATION_FILE, adapter_base, tokenizer_source
from yelp_lora.errors import ModelError, SaveError
from yelp_lora.modeling.base import load_adapter, load_tokenizer
from yelp_lora.modeling.calibration import load_activation_ranges, observed_key
from yelp_lora.modeling.hardware import ONNX_BACKENDS, int8_attention
from yelp_lora.registry.store import base_model_fingerprint
from yelp_lora.util.atomic import atomic_dir, exclusive
from yelp_lora.util.hashing import file_sha256

log = logging.getLogger("yelp_lora.inference")

CACHE_ENV = "YELP_LORA_CACHE"
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
OPSET = 17
GRAPH_FORMAT = "fused-v8-layer-norm-first-token-query-smoothed-int8-attention-per-cpu"  # bump when export() changes, so cached files are rebuilt
HASHES_FILE = "sha256.json"  # {file name: sha256} of the exported files, written with them
# ONNX Runtime's CPU SkipLayerNormalization kernel measured slower than the residual Add and a
# LayerNormalization; this session transformer would fuse them back.
UNFUSED_AT_LOAD = ["SkipLayerNormFusion"]
# SmoothQuant's migration strength: 0.9 of each input channel's range moves into the weights.
# Chosen on fidelity to fp32 (flipped predictions) over 3,799 train.csv and open_dataset_train.csv
# reviews: 0.5 / 0.8 / 0.9 flipped 223 / 94 / 90 against 145 unsmoothed (docs/performance.md).
SMOOTHING_ALPHA = 0.9
# An encoder matmul's traced name, e.g. /bert/encoder/layer.0/intermediate/dense/MatMul: its linear
# layer's path, as modeling.calibration saves its ranges.
ENCODER_MATMUL = re.compile(r"^/[^/]+/(encoder/layer\.\d+/.+)/MatMul$")


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "yelp_lora") / "onnx"


def _cache_key(adapter_dir: Path, base: str) -> str:
    """The adapter's own files, the base model's hash, and the versions and per-CPU form that shape the exported graph."""
    import onnxruntime

    base_hash = base_model_fingerprint(base, base).sha256 or f"unhashed:{base}"
    digest = hashlib.sha256(
        f"{torch.__version__}|{onnxruntime.__version__}|opset{OPSET}|{GRAPH_FORMAT}|{int8_attention().value}|"
        f"base:{base_hash}".encode()
    )
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "config.json", INT8_CALIBRATION_FILE):
        path = adapter_dir / name
        if path.is_file():
            digest.update(name.encode() + path.read_bytes())
    return digest.hexdigest()[:20]


def export_dir(adapter_dir: Path, base: str) -> Path:
    """The cache directory an adapter's export goes to; beside it `<dir>.lock`, which an export holds
    locked while it writes (the empty file stays)."""
    return cache_root() / _cache_key(adapter_dir, base)


def export(adapter_dir: Path, target: Path, *, base: str | None = None, origin: Path | None = None) -> None:
    """Write TARGET/model.onnx (merged, fused fp32) and TARGET/model.int8.onnx (int8 weights, dynamic
    activations), the latter only if the adapter's activation ranges are readable (or absent)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    try:
        ranges, int8 = load_activation_ranges(adapter_dir, origin), True
    except ModelError as err:  # fp32 needs no ranges; an int8 request fails on them in exported_model
        log.warning("%s: exporting the fp32 graph only", err)
        ranges, int8 = None, False
    model, tokenizer = load_adapter(adapter_dir, merge=True, base=base, origin=origin)
    # Eager attention traces to the MatMul/Softmax pattern ONNX Runtime fuses into one Attention
    # kernel; SDPA's traced form is not recognised (measured 2x slower in int8).
    model.set_attn_implementation("eager")
    # Two rows of unequal length, so the traced graph keeps the padding-mask path.
    dummy = tokenizer(["a padded example row", "a"], padding=True, return_tensors="pt")
    inputs = (dummy["input_ids"], dummy["attention_mask"])
    dynamic = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}}
    with atomic_dir(target) as staging, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape-dependent Python branches, checked by tests
        # The TorchScript exporter needs no onnxscript and handles dynamic sequence lengths well.
        traced = staging / "traced.onnx"
        torch.onnx.export(
            model, inputs, str(traced), dynamo=False, opset_version=OPSET,
            input_names=["input_ids", "attention_mask"], output_names=["logits"], dynamic_axes=dynamic,
        )
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # the fusion report and the "consider pre-processing" hint
        try:
            fused = optimize_model(
                str(traced), model_type="bert",
                num_heads=model.config.num_attention_heads, hidden_size=model.config.hidden_size,
            )
            if int8:  # cut and rewritten its own way below
                int8_model = onnx.ModelProto()
                int8_model.CopyFrom(fused.model)
            last_layer_first_token_only(fused.model)
            decompose_skip_layer_norms(fused.model)
            fused.save_model_to_file(str(staging / FP32_FILE))
            traced.unlink()
            written = [FP32_FILE]
            if int8:
                standard = int8_attention().value == "standard"
                last_layer_first_token_only(int8_model, standard_core=standard)
                decompose_skip_layer_norms(int8_model)
                if ranges is not None:  # else trained before they were saved: exported_model warns
                    smooth_activations(int8_model, ranges)
                if standard:
                    standard_attention(int8_model)
                # The quantizer takes any node named Attention for Microsoft's (whose int8 form is
                # QAttention): ONNX's own are left to it as they are.
                cores = [node.name for node in int8_model.graph.node if node.op_type == "Attention" and not fused_attention(node)]
                # Per-channel weight scales keep macro-F1 close to fp32. The fused kernels carry no
                # inferable output types, hence the default tensor type (float).
                quantize_dynamic(
                    int8_model, staging / INT8_FILE, weight_type=QuantType.QInt8, per_channel=True,
                    nodes_to_exclude=FIRST_TOKEN_FP32_NODES + cores,
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
                )
                written.append(INT8_FILE)
            hashes = {name: file_sha256(staging / name) for name in written}
            (staging / HASHES_FILE).write_text(json.dumps(hashes, indent=2) + "\n", encoding="utf-8")
        finally:
            logging.getLogger().setLevel(quiet)


def fused_attention(node) -> bool:
    """ONNX Runtime's fused Attention (Microsoft's domain), not ONNX's standard node of the same name."""
    return node.op_type == "Attention" and node.domain == "com.microsoft"


def last_layer_first_token_only(model, attention_mask: str = "attention_mask", *, standard_core: bool = False) -> None:
    """Run the last layer for the first ([CLS]) token only, in place: the pooler and the head read
    nothing else.

    Its fused Attention becomes the same arithmetic in standard ops with a query of one token:
    keys and values for every token, the query for [CLS] alone, then its scores, softmax and
    weighted values (`attention_mask`, the graph input, masks the padding). After the attention,
    the residual is the first token's too, so the output projection, LayerNorms and FFN also run
    for one token. On MiniLM: 11-12% of a forward pass for the cut after the attention, 4% more
    for the query (docs/performance.md). `standard_core`: the scores, softmax and weighted values as
    one ONNX standard Attention node instead (`standard_attention`'s form, for the int8 graph on AMX:
    +3.1% there, the same logits).
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    lengths = _row_lengths(model, attention_mask) if standard_core else None
    attentions = [index for index, node in enumerate(graph.node) if fused_attention(node)]
    if not attentions:
        raise ModelError("the exported graph has no fused Attention node: cannot cut its last layer")
    last = attentions[-1]
    attention = graph.node[last]
    hidden_states, qkv_weight, qkv_bias = attention.input[:3]
    later = graph.node[last + 1 :]
    if sum(name == hidden_states for node in later for name in node.input) != 1:
        raise ModelError("the last layer's residual input has other readers: cannot cut it to one token")
    for node in later:
        for position, name in enumerate(node.input):
            if name == hidden_states:
                node.input[position] = "first_token/hidden_states"
    initializers = {init.name: init for init in graph.initializer}
    weight, bias = (numpy_helper.to_array(initializers[name]) for name in (qkv_weight, qkv_bias))  # [Q | K | V] columns
    for name in (qkv_weight, qkv_bias):
        graph.initializer.remove(initializers[name])
    hidden, heads = weight.shape[0], next(a.i for a in attention.attribute if a.name == "num_heads")
    nodes = []

    def constant(name: str, value, dtype=np.int64) -> str:
        graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=dtype), f"first_token/{name}"))
        return f"first_token/{name}"

    def op(op_type: str, inputs: list[str], output: str, **attributes) -> str:
        nodes.append(helper.make_node(op_type, inputs, [f"first_token/{output}"], name=f"first_token/{output}", **attributes))
        return f"first_token/{output}"

    def linear(name: str, x: str, columns: slice) -> str:
        product = op("MatMul", [x, constant(f"{name}_weight", weight[:, columns], np.float32)], f"{name}_product")
        return op("Add", [product, constant(f"{name}_bias", bias[columns], np.float32)], name)

    def heads_first(x: str, name: str, perm: list[int]) -> str:
        split = op("Reshape", [x, constant(f"{name}_shape", [0, -1, heads, hidden // heads])], f"{name}_heads")
        return op("Transpose", [split], f"{name}_t", perm=perm)

    first = op("Slice", [hidden_states, constant("zero", [0]), constant("one", [1]), constant("one_axis", [1])], "hidden_states")
    key_value = linear("key_value", hidden_states, slice(hidden, None))
    nodes.append(helper.make_node("Split", [key_value, constant("key_value_sizes", [hidden, hidden])],
                                  ["first_token/key", "first_token/value"], axis=2, name="first_token/split"))
    query = linear("query", first, slice(hidden))
    if lengths is not None:
        nodes.append(helper.make_node(
            "Attention", [query, "first_token/key", "first_token/value", "", "", "", lengths], [attention.output[0]],
            name="first_token/core", q_num_heads=heads, kv_num_heads=heads))
    else:
        query = heads_first(query, "query", [0, 2, 1, 3])  # batch, head, 1, d
        key = heads_first("first_token/key", "key", [0, 2, 3, 1])  # batch, head, d, tokens
        value = heads_first("first_token/value", "value", [0, 2, 1, 3])  # batch, head, tokens, d
        scores = op("MatMul", [query, key], "scores")
        scores = op("Mul", [scores, constant("scale", 1 / np.sqrt(hidden // heads), np.float32)], "scaled_scores")
        # 0 where attention_mask is 1, -10000 on padding (ONNX Runtime's Attention masks with the same value).
        mask = op("Cast", [attention_mask], "mask", to=1)
        mask = op("Sub", [mask, constant("one_float", 1.0, np.float32)], "mask_off")
        mask = op("Mul", [mask, constant("mask_value", 10000.0, np.float32)], "mask_add")
        mask = op("Unsqueeze", [mask, constant("mask_axes", [1, 2])], "mask_heads")
        probabilities = op("Softmax", [op("Add", [scores, mask], "masked_scores")], "probabilities", axis=-1)
        context = op("Transpose", [op("MatMul", [probabilities, value], "context")], "context_t", perm=[0, 2, 1, 3])
        nodes.append(helper.make_node("Reshape", [context, constant("hidden_shape", [0, -1, hidden])],
                                      [attention.output[0]], name=attention.output[0]))  # the attention's own output, read by the rest
    graph.node.remove(attention)
    for position, node in enumerate(nodes, start=last):
        graph.node.insert(position, node)


# The first-token attention's products of two activations stay fp32 in the int8 graph.
FIRST_TOKEN_FP32_NODES = ["first_token/scores", "first_token/context"]


def smooth_activations(model, ranges: dict[str, np.ndarray], alpha: float = SMOOTHING_ALPHA) -> None:
    """SmoothQuant, in place: each matmul that reads every token gets its input divided by a
    per-channel s (an elementwise Mul) and its weight rows multiplied by s, the same product in
    fp32, with s = range^alpha / weight range^(1 - alpha). Int8 then quantizes inputs whose
    channels span less, into weights of per-column scales that absorb it. The matmuls after the
    last layer's attention read [CLS] alone, whose ranges were not saved (they cover every token),
    and are left as they are, as are the pooler and the head.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    nodes, layer, one_token = [], 0, False
    for node in graph.node:
        key = None
        # Fused Attention nodes carry no layer name; they come in layer order, the last layer's
        # keys and values (last_layer_first_token_only) after them.
        if fused_attention(node) or node.name == "first_token/key_value_product":
            key, layer = observed_key(layer, "attention.self.query"), layer + 1
        elif not one_token and node.op_type == "MatMul" and (named := ENCODER_MATMUL.match(node.name)):
            key = named.group(1).replace("/", ".")
        one_token |= node.name == "first_token/key_value_product"
        if key is not None:
            weight = numpy_helper.to_array(initializers[node.input[1]])
            if key not in ranges or ranges[key].shape != weight.shape[:1]:
                found = "none" if key not in ranges else f"{ranges[key].shape[0]} channels"
                raise ModelError(f"{INT8_CALIBRATION_FILE}: ranges for {key}: {found}, but the model's matmul there "
                                 f"reads {weight.shape[0]}: the file belongs to another model")
            graph.initializer.remove(initializers[node.input[1]])  # each linear layer's own weights
            largest = np.maximum(ranges[key], 1e-5)
            scale = (largest**alpha / np.maximum(np.abs(weight).max(axis=1), 1e-5) ** (1 - alpha)).astype(np.float32)
            graph.initializer.append(numpy_helper.from_array(weight * scale[:, None], f"{node.name}/smoothed_weight"))
            graph.initializer.append(numpy_helper.from_array(1 / scale, f"{node.name}/inverse_smoothing"))
            nodes.append(helper.make_node("Mul", [node.input[0], f"{node.name}/inverse_smoothing"],
                                          [f"{node.name}/smoothed_input"], name=f"{node.name}/smoothing"))
            node.input[0], node.input[1] = f"{node.name}/smoothed_input", f"{node.name}/smoothed_weight"
        nodes.append(node)
    saved_layers = {key.split(".")[2] for key in ranges}
    if layer != len(saved_layers):
        raise ModelError(f"{INT8_CALIBRATION_FILE} holds ranges for {len(saved_layers)} layers, the graph's "
                         f"attention {layer}: cannot match them layer by layer")
    del graph.node[:]
    graph.node.extend(nodes)


# ONNX's standard Attention as of opset 24, which reads right padding as lengths (nonpad_kv_seqlen).
# ONNX Runtime runs it from 1.25; 1.24 loads it but ignores the lengths, attending to the padding.
STANDARD_ATTENTION_OPSET = 24
STANDARD_ATTENTION_RUNTIME = (1, 25)
ROW_LENGTHS = "attention/lengths"


def standard_attention(model, attention_mask: str = "attention_mask") -> None:
    """Replace each fused Attention by its query, key and value matmuls and ONNX's standard
    Attention node, in place.

    The same arithmetic (the int8 logits equal QAttention's to the bit on the AMX Xeon). ONNX
    Runtime's standard node takes the padding (on the right, as `data.tokenize.pad` and the fused
    kernel's mask index have it) as each row's length, which costs nothing where a boolean mask cost
    10% of the attention core. On the AMX Xeon the int8 graph ran 6.8% faster this way (one thread,
    one review per pass), 8% with the last layer's [CLS] attention as the same node
    (docs/performance.md); the export uses it where `modeling.hardware.int8_attention` says so.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    lengths = _row_lengths(model, attention_mask)

    def constant(name: str, value: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    nodes, layer = [], 0
    for node in graph.node:
        if not fused_attention(node):
            nodes.append(node)
            continue
        x, *parameters = node.input[:3]
        weight, bias = (numpy_helper.to_array(initializers[name]) for name in parameters)  # [Q | K | V] columns
        for name in parameters:
            graph.initializer.remove(initializers[name])
        hidden, heads = weight.shape[0], next(a.i for a in node.attribute if a.name == "num_heads")
        name, layer = f"attention_{layer}", layer + 1
        # Three matmuls rather than one and a Split: the Split's copy cost more than the two more calls.
        for index, part in enumerate(("query", "key", "value")):
            columns = slice(index * hidden, (index + 1) * hidden)
            nodes += [
                helper.make_node("MatMul", [x, constant(f"{name}/{part}_weight", weight[:, columns].copy())],
                                 [f"{name}/{part}_product"], name=f"{name}/{part}_product"),
                helper.make_node("Add", [f"{name}/{part}_product", constant(f"{name}/{part}_bias", bias[columns].copy())],
                                 [f"{name}/{part}"], name=f"{name}/{part}"),
            ]
        nodes.append(helper.make_node(
            "Attention", [f"{name}/query", f"{name}/key", f"{name}/value", "", "", "", lengths],
            [node.output[0]], name=f"{name}/core", q_num_heads=heads, kv_num_heads=heads))
    del graph.node[:]
    graph.node.extend(nodes)


def _row_lengths(model, attention_mask: str) -> str:
    """The name of each row's length, ReduceSum(attention_mask), which ONNX's standard Attention
    reads; the node is added once, first, and the model's opset raised to the one that reads it."""
    import onnxruntime
    from onnx import helper, numpy_helper

    if tuple(map(int, onnxruntime.__version__.split(".")[:2])) < STANDARD_ATTENTION_RUNTIME:
        needed = ".".join(map(str, STANDARD_ATTENTION_RUNTIME))
        raise ModelError(f"the int8 ONNX graph needs onnxruntime>={needed}, which masks padding in ONNX's standard "
                         f"Attention; {onnxruntime.__version__} is installed: pip install 'onnxruntime>={needed}'")
    graph = model.graph
    if not any(node.name == ROW_LENGTHS for node in graph.node):
        graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), f"{ROW_LENGTHS}_axis"))
        graph.node.insert(0, helper.make_node("ReduceSum", [attention_mask, f"{ROW_LENGTHS}_axis"], [ROW_LENGTHS],
                                              name=ROW_LENGTHS, keepdims=0))
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, STANDARD_ATTENTION_OPSET)
    return ROW_LENGTHS


def decompose_skip_layer_norms(model) -> None:
    """Replace each SkipLayerNormalization (x + skip [+ bias], then LayerNorm) by the residual Add
    and ONNX's standard LayerNormalization, in place: the same arithmetic (fp32 logits within 4e-6).

    ONNX Runtime's fused SkipLayerNormalization kernel ran 16-20% slower on both CPUs measured; the
    LayerNorm as a LayerNormalization node ran 5% faster than as nine plain ops on the AMX Xeon
    (int8; fp32 3%) and the same on the AVX-512 EPYC (docs/performance.md).
    """
    from onnx import helper

    graph = model.graph
    nodes = []
    for node in graph.node:
        if node.op_type != "SkipLayerNormalization":
            nodes.append(node)
            continue
        if any(node.output[1:]):
            raise ModelError(f"{node.name}: its mean / variance outputs are used; cannot decompose it")
        x, skip, gamma, beta, *rest = node.input
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        name = node.name
        summed = f"{name}/sum"
        if rest and rest[0]:  # the bias of the matmul before it
            nodes.append(helper.make_node("Add", [x, skip], [f"{name}/sum_nobias"]))
            nodes.append(helper.make_node("Add", [f"{name}/sum_nobias", rest[0]], [summed]))
        else:
            nodes.append(helper.make_node("Add", [x, skip], [summed]))
        nodes.append(helper.make_node("LayerNormalization", [summed, gamma, beta], [node.output[0]],
                                      name=f"{name}/layer_norm", axis=-1, epsilon=epsilon))
    del graph.node[:]
    graph.node.extend(nodes)


STALE_EXPORT_S = 3600  # an export takes a minute or two: a staging directory this old was left by a killed one


def _remove_killed_exports(target: Path) -> None:
    """Staging directories a killed export of `target` left (atomic_dir's), by age: where the file system
    keeps no locks, a younger one may be another process's export in progress."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > STALE_EXPORT_S:
                shutil.rmtree(stale, ignore_errors=True)


def exported_model(adapter_dir: Path, backend: str, *, base: str | None = None, origin: Path | None = None) -> Path:
    """The cached ONNX file for `backend` ('onnx' or 'onnx-int8'), exported on first use, and
    rebuilt when its bytes no longer match the hash recorded when it was exported."""
    if backend not in ONNX_BACKENDS:
        raise ModelError(f"unknown ONNX backend {backend!r}: expected one of {', '.join(ONNX_BACKENDS)}")
    if importlib.util.find_spec("onnxruntime") is None:
        raise ModelError("the ONNX export that backends onnx, onnx-int8 and openvino run needs onnxruntime: "
                         "pip install 'yelp-lora[onnx]'")
    base = base or adapter_base(adapter_dir)
    target = export_dir(adapter_dir, base)
    name = INT8_FILE if backend == "onnx-int8" else FP32_FILE
    if not _intact(target, name):  # a cached file that is intact is hashed once per load, here
        if (target / INT8_FILE).is_file():  # an export finished there once: the file changed since
            log.warning("cached ONNX file %s does not match the sha256 recorded when it was exported: rebuilding it",
                        target / name)
        if backend == "onnx-int8":
            load_activation_ranges(adapter_dir, origin)  # a damaged file fails here in one line, before the export
        # Other processes exporting the same model (torchrun ranks, a second server) wait for this one.
        waiting = partial(log.warning, "another process is exporting %s: waiting for it", target)
        with exclusive(target.with_name(f"{target.name}.lock"), on_wait=waiting, optional=True):
            try:
                if not _intact(target, name):
                    _remove_killed_exports(target)
                    export(adapter_dir, target, base=base, origin=origin)
            except SaveError:
                if not _intact(target, name):  # else, on a file system without locks, another process published it first
                    raise
        if not _intact(target, name):
            raise ModelError(f"the ONNX file exported to {target / name} does not match its recorded sha256")
    if backend == "onnx-int8" and not (adapter_dir / INT8_CALIBRATION_FILE).is_file():
        log.warning("%s has no %s (trained before it was saved): int8 without smoothing, further from fp32; "
                    "`yelp-lora calibrate RUN_DIR` on the run it came from adds it (then `registry add` that run "
                    "again for a registered version)", origin or adapter_dir, INT8_CALIBRATION_FILE)
    return target / name


def _intact(target: Path, name: str) -> bool:
    """Whether TARGET/name exists and has the sha256 recorded for it at export."""
    try:
        recorded = json.loads((target / HASHES_FILE).read_text(encoding="utf-8"))
        return isinstance(recorded, dict) and recorded.get(name) == file_sha256(target / name)
    except (OSError, ValueError):
        return False


class OnnxClassifier:
    """An ONNX Runtime session called like a transformers classifier: model(**batch).logits.

    A call uses every core. Calls made at once from `concurrent_workers` threads go through
    `concurrent()`, a second session on one thread each: no thread waits for another at every
    kernel, which measured 5% faster on a quiet 2-core machine and 50% faster while one of its
    cores was slowed by a neighbour (docs/performance.md).
    """

    device = torch.device("cpu")
    first_token_last_layer = True  # export() cuts the last layer to [CLS]: FLOP counts skip the rest

    def __init__(self, path: Path, threads: int | None = None, profile_prefix: str | None = None):
        import onnxruntime as ort

        # torch's thread count by default (one per physical core, or OMP_NUM_THREADS, e.g. under torchrun).
        threads = threads or torch.get_num_threads()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        if profile_prefix:  # ONNX Runtime's own per-kernel timings, written by session.end_profiling()
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        self.session = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=UNFUSED_AT_LOAD
        )
        self.input_names = {node.name for node in self.session.get_inputs()}
        self.concurrent_workers = threads
        self._one_thread = (
            OnnxClassifier(path, threads=1, profile_prefix=profile_prefix and f"{profile_prefix}-one-thread")
            if threads > 1 else self
        )

    def concurrent(self) -> "OnnxClassifier":
        """The one-thread session, safe to call from `concurrent_workers` threads at once."""
        return self._one_thread

    def __call__(self, **batch: torch.Tensor) -> SimpleNamespace:
        feeds = {name: value.numpy().astype(np.int64, copy=False) for name, value in batch.items() if name in self.input_names}
        (logits,) = self.session.run(["logits"], feeds)
        return SimpleNamespace(logits=torch.from_numpy(logits))


def load_onnx_classifier(adapter_dir: Path, backend: str, *, base: str | None = None, origin: Path | None = None):
    """(OnnxClassifier, tokenizer) for an adapter directory, exporting it first if needed (`base`,
    `origin`: as for `load_adapter`)."""
    path = exported_model(adapter_dir, backend, base=base, origin=origin)
    return OnnxClassifier(path), load_tokenizer(tokenizer_source(adapter_dir))
