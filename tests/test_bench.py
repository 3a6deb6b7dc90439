"""The bench command and the ONNX Runtime backend, on the real MiniLM and real rows from ../shared.

Correctness only: speed figures live in `yelp-lora bench` output, never in assertions here.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from support import auto_backend

from yelp_lora.bench.flops import forward_flops, training_flops
from yelp_lora.bench.prediction import PREDICT_PATHS
from yelp_lora.bench.report import format_report
from yelp_lora.bench.training import TRAIN_PATHS
from yelp_lora.cli import main
from yelp_lora.config import LABEL_NAMES, LoraSettings
from yelp_lora.data.sampling import sample_split
from yelp_lora.data.sources import load_split
from yelp_lora.errors import ConfigError, ModelError
from yelp_lora.inference.predictor import Predictor
from yelp_lora.modeling.base import build_classifier
from yelp_lora.modeling.hardware import auto_choices, auto_pad_multiple, bf16_supported
from yelp_lora.modeling.lora import apply_lora

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory):
    """One `bench --quick` run (its own training pass writes the adapter the other tests use, so its work
    directory is kept until they are done)."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    cache = tmp_path_factory.mktemp("onnx-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("YELP_LORA_CACHE", str(cache))
        skips = ["--skip", "ours-fp32", "--skip", "merged-bf16", "--skip", "openvino-bf16"]
        sweeps = ["--micro-batch-size", "2", "--pad-multiple", "64"]
        code = main(["bench", "--quick", "--keep-work", *skips, *sweeps, "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    yield result, cache
    shutil.rmtree(result["workdir"])


@pytest.fixture(scope="module")
def real_texts():
    rows = load_split("auto", "test")
    return sample_split(rows, 24, seed=7).texts


def test_quick_bench_reports_every_path(quick_bench):
    result, _ = quick_bench
    for key in ("settings", "machine", "peak_flops", "training", "prediction", "service", "speedup", "macro_f1_vs_fp32"):
        assert key in result
    assert result["peak_flops"]["fp32"] > 0 and result["peak_flops"]["bf16"] > 0 and result["peak_flops"]["int8"] > 0
    assert set(result["instruction_sets"]) == {"fp32", "bf16", "int8", "torch_kernels"}
    # What auto chose on this machine, and why, as train / predict / serve would choose it.
    assert [(c["setting"], c["value"]) for c in result["auto"]] == [tuple(c[:2]) for c in auto_choices()]
    assert "What `auto` chooses on this machine" in format_report(result)
    # The closing line names what the work directory holds: here the adapter the bench trained, no random base.
    assert f"Work files (training outputs and logs, the adapter its own training wrote): {result['workdir']}" in format_report(result)
    assert "prediction backend" in format_report(result)
    assert [row["path"] for row in result["training"]] == ["usual", "ours", "ours-mb2", "ours-pad64"]
    # The usual way runs whole batches; ours the CPU's auto micro-batch; the sweep paths what they ask for.
    assert [row["micro_batch_size"] for row in result["training"]] == [16, 4, 2, 4]
    assert [row["pad_multiple"] for row in result["training"]] == [1, *[auto_pad_multiple(torch.device("cpu"))] * 2, 64]
    assert "ours: micro-batches of 2" in format_report(result)
    assert "ours: lengths padded to multiples of 64" in format_report(result)
    assert [row["path"] for row in result["prediction"]] == ["pipeline", "merged-fp32", "onnx-fp32", "onnx-int8", "openvino-fp32"]
    assert [row["batch_size"] for row in result["prediction"]] == [1, 16, 1, 1, 1]  # the pipeline's 1, then AUTO_BATCH
    for row in result["training"] + result["prediction"]:
        for key in ("samples_per_s", "tokens_per_s", "flops_per_s", "of_peak", "peak_rss_mib"):
            assert row[key] > 0, (row["path"], key)
    usual, ours, ours_mb2, ours_pad64 = result["training"]
    # Same rows for all; only the usual way pads every text to 256 tokens, and smaller micro-batches pad less.
    assert usual["real_tokens"] == ours["real_tokens"] == ours_mb2["real_tokens"] == ours_pad64["real_tokens"]
    assert ours_mb2["computed_tokens"] <= ours["computed_tokens"] <= ours_pad64["computed_tokens"]
    assert ours_pad64["computed_tokens"] % (4 * 64) == 0  # micro-batches of 4 rows, each padded to a multiple of 64
    assert usual["computed_tokens"] == usual["rows"] * 256
    assert ours["computed_tokens"] <= usual["computed_tokens"]  # quick mode: one batch, padded to its longest
    # Every prediction path scored the same rows with the same adapter, in the same interleaved rounds.
    assert len({row["rows"] for row in result["prediction"]}) == 1
    assert all(len(row["round_samples_per_s"]) == result["settings"]["rounds"] == 2 for row in result["prediction"])
    # Quick mode trains one step: one round, whatever the setting.
    assert all(len(row["round_samples_per_s"]) == 1 for row in result["training"])
    # The peak is the best of the start, one measurement per round and the end.
    measured = result["peak_flops_measured"]
    assert len(measured) == 1 + 1 + 2 + 1 and result["peak_flops"]["bf16"] == max(m["bf16"] for m in measured)
    assert [row["first_token_last_layer"] for row in result["prediction"]] == [False, False, True, True, True]
    # Each path is measured against the peak of its own precision: the int8 path against the int8 GEMM's.
    int8 = next(row for row in result["prediction"] if row["path"] == "onnx-int8")
    assert int8["of_peak"] == pytest.approx(int8["flops_per_s"] / result["peak_flops"]["int8"])
    service = result["service"]
    assert isinstance(service["available"], bool)
    if service["available"]:
        fastest = max(result["prediction"][1:], key=lambda row: row["samples_per_s"])
        assert service["path"] == fastest["path"]  # served the way it ran fastest offline
        assert [level["clients"] for level in service["levels"]] == [1, 8, 32]
        assert all(level["errors"] == 0 for level in service["levels"])
        # Every level sends the requests asked for, and says how much CPU its load generator took.
        assert all(level["requests"] == result["settings"]["requests"] for level in service["levels"])
        assert all(0 < level["client_cpu_share"] < 1 for level in service["levels"])


def test_onnx_backends_agree_with_torch_on_real_rows(quick_bench, real_texts, monkeypatch):
    result, cache = quick_bench
    monkeypatch.setenv("YELP_LORA_CACHE", str(cache))
    reference, cut, _ = Predictor(result["adapter"], backend="torch").probabilities(real_texts)
    onnx_fp32, onnx_cut, _ = Predictor(result["adapter"], backend="onnx").probabilities(real_texts)
    np.testing.assert_allclose(onnx_fp32, reference, atol=1e-4)
    assert (onnx_cut == cut).all()
    # Padded batches too: the graph's last layer reads only the first token, which padding never moves.
    padded = Predictor(result["adapter"], backend="onnx", batch_size=8).probabilities(real_texts)[0]
    np.testing.assert_allclose(padded, reference, atol=1e-4)
    int8_predictor = Predictor(result["adapter"], backend="onnx-int8")
    int8 = int8_predictor.probabilities(real_texts)[0]
    assert np.abs(int8 - reference).max() < 0.02
    # A review's int8 prediction does not depend on the reviews sent with it (activation scales
    # are set per batch, and the default batch is one text), nor on which session ran it: alone,
    # on the all-cores session; among others, on the one-thread session, several at once.
    assert int8_predictor.model.concurrent_workers == torch.get_num_threads()
    for index in (0, len(real_texts) - 1):
        alone = int8_predictor.probabilities([real_texts[index]])[0][0]
        assert np.array_equal(alone, int8[index])
    # With one thread (OMP_NUM_THREADS=1, as under torchrun): one session, the same answers.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one_thread = Predictor(result["adapter"], backend="onnx-int8")
    finally:
        torch.set_num_threads(threads)
    assert one_thread.model.concurrent_workers == 1 and one_thread.model.concurrent() is one_thread.model
    assert np.array_equal(one_thread.probabilities(real_texts)[0], int8)
    top2 = np.sort(reference, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.02  # rows the fp32 model does not call a near tie
    assert (int8.argmax(1)[clear] == reference.argmax(1)[clear]).all()


def test_openvino_answers_like_torch_and_bf16_close(quick_bench, real_texts, monkeypatch):
    result, cache = quick_bench
    monkeypatch.setenv("YELP_LORA_CACHE", str(cache))
    reference = Predictor(result["adapter"], backend="torch").probabilities(real_texts)[0]
    predictor = Predictor(result["adapter"], backend="openvino")
    assert (predictor.backend, predictor.info.backend, predictor.batch_size, predictor.bf16) == ("openvino", "openvino", 1, False)
    fp32 = predictor.probabilities(real_texts)[0]
    np.testing.assert_allclose(fp32, reference, atol=1e-4)
    for index in (0, len(real_texts) - 1):  # a review alone gets the answer it got among the others
        np.testing.assert_allclose(predictor.probabilities([real_texts[index]])[0][0], fp32[index], atol=1e-6)
    if bf16_supported(torch.device("cpu")):
        bf16 = Predictor(result["adapter"], backend="openvino", bf16=True)
        assert bf16.bf16 and np.abs(bf16.probabilities(real_texts)[0] - reference).max() < 0.05


def test_exported_graph_uses_onnx_runtimes_fused_bert_kernels(quick_bench, real_texts, monkeypatch):
    import collections

    import onnx

    from yelp_lora.artifacts import tokenizer_source
    from yelp_lora.inference.onnx_backend import OnnxClassifier, exported_model
    from yelp_lora.modeling.base import load_tokenizer

    result, cache = quick_bench
    monkeypatch.setenv("YELP_LORA_CACHE", str(cache))
    layers = 6  # MiniLM
    graph = onnx.load(exported_model(Path(result["adapter"]), "onnx")).graph
    fp32 = collections.Counter(node.op_type for node in graph.node)
    # Every layer's attention fused but the last, which runs as plain ops for the first token.
    assert fp32["Attention"] == layers - 1 and fp32["BiasGelu"] == layers and fp32["EmbedLayerNormalization"] == 1
    assert fp32["Softmax"] == 1
    # Residual + LayerNorm, twice per layer, as an Add and a standard LayerNormalization, not ONNX Runtime's fused kernel.
    assert fp32["SkipLayerNormalization"] == 0 and fp32["LayerNormalization"] == 2 * layers
    # The last layer's query and residual are the first token's alone; its keys and values every token's.
    nodes = {node.name: node for node in graph.node}
    first_token = nodes["first_token/hidden_states"]
    assert first_token.op_type == "Slice" and nodes["first_token/key_value_product"].input[0] == first_token.input[0]
    readers = [node.name for node in graph.node if first_token.output[0] in node.input]
    assert len(readers) == 2 and "first_token/query_product" in readers  # the query and the residual add
    # Padded rows of unequal length, as a batch of 2 and more runs them.
    batch = dict(load_tokenizer(tokenizer_source(Path(result["adapter"])))(
        real_texts[:4], padding=True, truncation=True, max_length=96, return_tensors="pt"))
    assert (batch["attention_mask"] == 0).any()
    # Each int8 form, whichever this CPU runs ($YELP_LORA_INT8_ATTENTION overrides its choice): the same logits.
    logits = {}
    for form in ("fused", "standard"):
        monkeypatch.setenv("YELP_LORA_INT8_ATTENTION", form)
        path = exported_model(Path(result["adapter"]), "onnx-int8")
        int8_graph = onnx.load(path).graph
        int8 = collections.Counter(node.op_type for node in int8_graph.node)
        if form == "fused":
            assert int8["QAttention"] == layers - 1 and int8["Attention"] == 0
            # The last layer's [CLS] attention as plain ops: its two products of activations stay fp32.
            assert sorted(node.name for node in int8_graph.node if node.op_type == "MatMul") == [
                "first_token/context", "first_token/scores"]
        else:  # int8 query, key and value matmuls, then ONNX's standard Attention, which reads each row's length
            assert int8["QAttention"] == 0 and int8["Attention"] == layers and int8["MatMul"] == 0
            lengths = next(node for node in int8_graph.node if node.name == "attention/lengths")
            assert all(node.input[6] == lengths.output[0] for node in int8_graph.node if node.op_type == "Attention")
        # Per layer: attention output, FFN in and out (and in the standard form, but in the last
        # layer, the query, key and value); the last layer's query and keys + values; then the
        # pooler and the head.
        projections = 3 * (layers - 1) if form == "standard" else 0
        assert int8["MatMulInteger"] == 3 * layers + projections + 2 + 2
        logits[form] = OnnxClassifier(path)(**batch).logits
    torch.testing.assert_close(logits["standard"], logits["fused"], rtol=0, atol=1e-4)


def test_standard_attention_computes_what_the_fused_kernel_does_padding_included(quick_bench, real_texts, monkeypatch):
    import onnx
    import onnxruntime as ort

    from yelp_lora.artifacts import tokenizer_source
    from yelp_lora.inference.onnx_backend import UNFUSED_AT_LOAD, exported_model, standard_attention
    from yelp_lora.modeling.base import load_tokenizer

    result, cache = quick_bench
    monkeypatch.setenv("YELP_LORA_CACHE", str(cache))
    adapter = Path(result["adapter"])
    model = onnx.load(exported_model(adapter, "onnx"))
    # Rows of unequal length, padded on the right: the padding must be masked from every row's attention.
    batch = load_tokenizer(tokenizer_source(adapter))(real_texts[:6], padding=True, truncation=True, max_length=96,
                                                       return_tensors="np")
    assert (batch["attention_mask"] == 0).any()

    def logits(graph_model) -> np.ndarray:
        session = ort.InferenceSession(graph_model.SerializeToString(), providers=["CPUExecutionProvider"],
                                       disabled_optimizers=UNFUSED_AT_LOAD)
        return session.run(["logits"], {name: batch[name].astype(np.int64) for name in ("input_ids", "attention_mask")})[0]

    fused = logits(model)
    # ONNX Runtime 1.24 would run the graph and attend to the padding: refused by name.
    with monkeypatch.context() as patch, pytest.raises(ModelError, match=r"needs onnxruntime>=1\.25, .* 1\.24\.4 is installed"):
        patch.setattr(ort, "__version__", "1.24.4")
        standard_attention(model)
    standard_attention(model)
    assert [(node.op_type, node.domain) for node in model.graph.node].count(("Attention", "")) == 6 - 1
    np.testing.assert_allclose(logits(model), fused, atol=1e-5)


def test_predict_cli_onnx_int8(quick_bench, real_texts, monkeypatch, capsys):
    result, cache = quick_bench
    monkeypatch.setenv("YELP_LORA_CACHE", str(cache))
    assert main(["predict", "--adapter", result["adapter"], "--backend", "onnx-int8", "--json", real_texts[0]]) == 0
    (prediction,) = json.loads(capsys.readouterr().out)
    assert prediction["stars"] in range(1, 6)
    assert abs(sum(prediction["probabilities"].values()) - 1) < 1e-4


def test_streaming_prediction_on_onnx_int8_and_resume_keeps_the_backend(
    quick_bench, real_texts, monkeypatch, tmp_path, capsys
):
    from yelp_lora.artifacts import resolve_adapter_dir
    from yelp_lora.inference import batch

    result, cache = quick_bench
    monkeypatch.setenv("YELP_LORA_CACHE", str(cache))
    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(json.dumps({"text": text}) + "\n" for text in real_texts), encoding="utf-8")
    output = tmp_path / "out.jsonl"
    command = ["predict", "--adapter", result["adapter"], "--input", str(source), "--output", str(output), "--chunk-size", "8"]
    assert main([*command, "--backend", "onnx-int8"]) == 0
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    expected = Predictor(result["adapter"], backend="onnx-int8").probabilities(real_texts)[0]
    assert [row["label"] for row in rows] == [LABEL_NAMES[i] for i in expected.argmax(1)]
    # An interrupted int8 run may not be finished by another backend: the parts would mix numerics.
    parts = batch.parts_dir(output)
    parts.mkdir()
    adapter_dir = resolve_adapter_dir(result["adapter"])
    interrupted = batch._job(source, adapter_dir, chunk_rows=8, backend="onnx-int8", requested_backend="onnx-int8",
                             batch_size=None, bf16=False, long_text="truncate")
    (parts / batch.JOB_FILE).write_text(interrupted.to_json(), encoding="utf-8")
    capsys.readouterr()
    assert main([*command, "--resume"]) == 2
    # (--backend auto, the default, is recorded as what it chose here; it resumes only a job it began.)
    assert (f"belongs to a different job (backend: 'onnx-int8' -> '{auto_backend()}'; "
            "requested_backend: 'onnx-int8' -> 'auto')") in capsys.readouterr().err
    # Nor one that read long reviews in windows by one that cuts them.
    interrupted = batch._job(
        source, adapter_dir, chunk_rows=8, backend=auto_backend(), requested_backend="auto", batch_size=None, bf16=False,
        long_text="chunk",
    )
    (parts / batch.JOB_FILE).write_text(interrupted.to_json(), encoding="utf-8")
    assert main([*command, "--resume"]) == 2
    assert "belongs to a different job (long_text: 'chunk' -> 'truncate')" in capsys.readouterr().err
    # A job recorded before `requested_backend` existed resumes on the backend it ran on.
    older = interrupted.model_copy(update={"long_text": "truncate", "requested_backend": None})
    (parts / batch.JOB_FILE).write_text(older.model_dump_json(exclude={"requested_backend"}), encoding="utf-8")
    assert main([*command, "--resume"]) == 0
    expected = Predictor(result["adapter"], backend=auto_backend()).probabilities(real_texts)[0]
    assert [json.loads(line)["label"] for line in output.read_text(encoding="utf-8").splitlines()] == [
        LABEL_NAMES[i] for i in expected.argmax(1)
    ]


def test_bench_with_every_path_skipped_needs_no_adapter(tmp_path, capsys):
    out = tmp_path / "bench.json"
    skips = [arg for path in [*TRAIN_PATHS, *PREDICT_PATHS] for arg in ("--skip", path)]
    work_dirs = lambda: set(Path(tempfile.gettempdir()).glob("yelp-lora-bench-*"))  # noqa: E731
    before = work_dirs()
    assert main(["bench", "--quick", "--no-service", *skips, "--json", str(out)]) == 0
    assert work_dirs() == before
    result = json.loads(out.read_text())
    assert result["training"] == [] and result["prediction"] == [] and result["adapter"] is None
    assert len(result["peak_flops_measured"]) == 2  # the start and the end: no rounds ran
    printed = capsys.readouterr().out
    assert "adapter for prediction: none (no prediction path)" in printed
    # Without --keep-work nothing is left behind.
    assert result["workdir"] is None and "Work files" not in printed


def test_unknown_backend_is_a_clear_error(quick_bench):
    result, _ = quick_bench
    with pytest.raises(ConfigError, match="backend 'tensorrt': expected one of auto, torch, onnx, onnx-int8"):
        Predictor(result["adapter"], backend="tensorrt")


def test_flop_count_matches_the_models_matmul_parameters():
    model = apply_lora(build_classifier("minilm", 42), LoraSettings())
    base = model.get_base_model()
    config = base.config
    h, n = config.hidden_size, np.array([100])
    # The frozen projections (LoRA's own A/B matrices are trainable, so not counted here).
    frozen = sum(m.weight.numel() for m in base.bert.encoder.modules()
                 if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad)
    lora = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    attention = config.num_hidden_layers * 4 * n[0] ** 2 * h
    forward = forward_flops(config, n)
    assert forward == pytest.approx(2 * frozen * n[0] + attention + 2 * h * h + 2 * h * 5)
    # Training: frozen matmuls twice (forward, input gradient), attention products and LoRA three times.
    training = training_flops(config, n, LoraSettings())
    assert training == pytest.approx(2 * 2 * frozen * n[0] + 3 * attention + 3 * 2 * lora * n[0] + 2 * 2 * h * h + 3 * 2 * h * 5)
    # Our ONNX graphs run the last layer's query, attention, output projection and FFN on the
    # first token only: keys and values are still computed for every token.
    last = base.bert.encoder.layer[-1]
    first_token_only = (last.attention.self.query, last.attention.output.dense, last.intermediate.dense, last.output.dense)
    skipped = sum(m.weight.numel() for m in first_token_only)
    skipped_attention = 4 * (n[0] - 1) * n[0] * h
    assert forward - forward_flops(config, n, first_token_last_layer=True) == pytest.approx(
        2 * skipped * (n[0] - 1) + skipped_attention
    )


def test_each_precisions_peak_names_the_best_instructions_the_cpu_offers():
    from yelp_lora.bench.peaks import instruction_sets

    amd = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni"}
    intel_amx = amd | {"amx_tile", "amx_bf16", "amx_int8"}
    assert {k: v for k, v in instruction_sets(amd).items() if k != "torch_kernels"} == {
        "fp32": "AVX-512", "bf16": "AVX-512 BF16", "int8": "AVX-512 VNNI"}
    assert instruction_sets(intel_amx)["bf16"] == "AMX-BF16" and instruction_sets(intel_amx)["int8"] == "AMX-INT8"
    assert instruction_sets({"avx2"})["int8"] == "AVX2" and instruction_sets(set())["fp32"] == "unknown"
