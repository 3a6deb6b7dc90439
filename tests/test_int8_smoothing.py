"""Int8 with SmoothQuant: the activation ranges `train` saves beside the adapter, and how the ONNX
export uses them (inference.onnx_backend.smooth_activations)."""

import json
import re
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from safetensors.torch import load_file, save_file
from support import cli, review_texts

from yelp_lora.artifacts import ADAPTER_WEIGHTS, INT8_CALIBRATION_FILE, tokenizer_source
from yelp_lora.errors import ModelError
from yelp_lora.inference.onnx_backend import UNFUSED_AT_LOAD, exported_model, smooth_activations
from yelp_lora.inference.predictor import Predictor
from yelp_lora.modeling.base import load_tokenizer
from yelp_lora.modeling.calibration import OBSERVED, load_activation_ranges, observed_key, save_activation_ranges

pytestmark = pytest.mark.slow


def smoothing_nodes(graph) -> list[str]:
    return [node.name for node in graph.node if node.name.endswith("/smoothing")]


def test_train_saves_the_range_of_every_quantized_input(minilm_run):
    ranges = load_activation_ranges(minilm_run / "adapter")
    layers, hidden, intermediate = 6, 384, 1536  # MiniLM
    assert sorted(ranges) == sorted(observed_key(layer, linear) for layer in range(layers) for linear in OBSERVED)
    for key, largest in ranges.items():
        assert largest.shape == ((intermediate,) if key.endswith(".output.dense") and ".attention." not in key else (hidden,))
        assert (largest > 0).all() and np.isfinite(largest).all(), key


def test_smoothing_leaves_the_fp32_model_computing_the_same(minilm_run):
    import onnxruntime as ort

    adapter = minilm_run / "adapter"
    model = onnx.load(exported_model(adapter, "onnx"))

    def logits(graph_model) -> np.ndarray:
        session = ort.InferenceSession(graph_model.SerializeToString(), providers=["CPUExecutionProvider"],
                                       disabled_optimizers=UNFUSED_AT_LOAD)
        batch = load_tokenizer(tokenizer_source(adapter))(
            review_texts()[:4], padding=True, truncation=True, max_length=128, return_tensors="np"
        )
        return session.run(["logits"], {name: batch[name].astype(np.int64) for name in ("input_ids", "attention_mask")})[0]

    plain = logits(model)
    initializers = {init.name: init for init in model.graph.initializer}
    attention_3 = [node for node in model.graph.node if node.op_type == "Attention"][3]
    ffn_in_3 = next(node for node in model.graph.node if node.name == "/bert/encoder/layer.3/intermediate/dense/MatMul")
    weights = {node.name: numpy_helper.to_array(initializers[node.input[1]]) for node in (attention_3, ffn_in_3)}
    ranges = load_activation_ranges(adapter)
    smooth_activations(model, ranges)
    np.testing.assert_allclose(logits(model), plain, atol=1e-4)
    # Each matmul is smoothed with its own layer's ranges: s = range^0.9 / weight range^0.1.
    smoothed = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node, key in ((attention_3, observed_key(3, "attention.self.query")),
                      (ffn_in_3, observed_key(3, "intermediate.dense"))):
        scale = ranges[key] ** 0.9 / np.abs(weights[node.name]).max(axis=1) ** 0.1
        np.testing.assert_allclose(smoothed[f"{node.name}/inverse_smoothing"], 1 / scale, rtol=1e-5)
    # Every matmul that reads all tokens: each layer's Q/K/V, and the other three of all but the
    # last layer, whose output projection and FFN read [CLS] alone.
    assert len(smoothing_nodes(model.graph)) == 6 + 3 * 5


def test_int8_export_smooths_with_the_adapters_ranges_and_without_them_plainly(tiny_run, tmp_path, caplog):
    adapter = tiny_run / "adapter"
    layers = 2  # the tiny BERT
    assert len(smoothing_nodes(onnx.load(exported_model(adapter, "onnx-int8")).graph)) == layers + 3 * (layers - 1)
    older = tmp_path / "adapter"  # an adapter trained before the ranges were saved
    shutil.copytree(adapter, older)
    (older / INT8_CALIBRATION_FILE).unlink()
    for _ in range(2):  # exported, then read from the cache: each time the user is told
        caplog.clear()
        assert smoothing_nodes(onnx.load(exported_model(older, "onnx-int8")).graph) == []
        assert f"{older} has no {INT8_CALIBRATION_FILE} (trained before it was saved)" in caplog.text
    # Ranges saved for another model: one line, not a traceback.
    save_activation_ranges(older, {key: values[:3] for key, values in load_activation_ranges(adapter).items()})
    with pytest.raises(ModelError, match="int8_calibration.safetensors: ranges for encoder.layer.0.attention.self.query: "
                                         "3 channels, .* the file belongs to another model"):
        exported_model(older, "onnx-int8")
    # Ranges of the same shape observed on other weights (copied from another run, or weights replaced).
    shutil.copy(adapter / INT8_CALIBRATION_FILE, older / INT8_CALIBRATION_FILE)
    weights = load_file(older / ADAPTER_WEIGHTS)
    weights = {name: tensor * 1.5 for name, tensor in weights.items()}
    save_file(weights, older / ADAPTER_WEIGHTS)
    with pytest.raises(ModelError, match=f"^{re.escape(str(older / INT8_CALIBRATION_FILE))} was observed on other "
                                         "adapter weights .*`yelp-lora calibrate RUN_DIR`"):
        exported_model(older, "onnx-int8")
    # A damaged file stops int8 only: fp32 (and OpenVINO, which runs it) needs no ranges.
    (older / INT8_CALIBRATION_FILE).write_bytes(b"not a tensor file")
    assert exported_model(older, "onnx").is_file()
    with pytest.raises(ModelError, match=f"{INT8_CALIBRATION_FILE} is not a readable safetensors file"):
        exported_model(older, "onnx-int8")
    # Predicting loads a private copy of the adapter; the error names the user's file, not the copy.
    with pytest.raises(ModelError, match=f"^{re.escape(str(older / INT8_CALIBRATION_FILE))} is not a readable"):
        Predictor(older, backend="onnx-int8")


def test_calibrate_gives_a_run_trained_without_ranges_the_file_train_writes(tiny_run, data_dir, tmp_path):
    older = tmp_path / "run"  # a run trained before train saved the ranges
    shutil.copytree(tiny_run, older)
    (older / "adapter" / INT8_CALIBRATION_FILE).unlink()
    # In this process, with its own thread count: calibrate observes with the one the run recorded
    # (the tiny run trained on one thread), and the adapter directory finds its run.
    done = cli("calibrate", str(older / "adapter"))
    assert f"written to {older / 'adapter' / INT8_CALIBRATION_FILE}" in done.stdout
    assert (older / "adapter" / INT8_CALIBRATION_FILE).read_bytes() == (tiny_run / "adapter" / INT8_CALIBRATION_FILE).read_bytes()
    # Data that has moved since training: named, then found with --data.
    record = json.loads((older / "run.json").read_text())
    record["resolved"]["data_source"] = str(tmp_path / "moved")
    (older / "run.json").write_text(json.dumps(record))
    assert f"data path not found: {tmp_path / 'moved'}" in cli("calibrate", str(older), check=False).stderr
    cli("calibrate", str(older), "--data", str(data_dir))
    assert (older / "adapter" / INT8_CALIBRATION_FILE).read_bytes() == (tiny_run / "adapter" / INT8_CALIBRATION_FILE).read_bytes()
    # Only a run directory says which rows the adapter was trained on.
    shutil.copytree(tiny_run / "adapter", tmp_path / "bare")
    assert "run.json not found" in cli("calibrate", str(tmp_path / "bare"), check=False).stderr
    # Weights that are not the ones run.json recorded (a run stopped mid-overwrite) learnt from other rows.
    weights = older / "adapter" / "adapter_model.safetensors"
    save_file({name: tensor * 1.5 for name, tensor in load_file(weights).items()}, weights)
    other = cli("calibrate", str(older), check=False)
    assert other.returncode == 2 and f"{older / 'run.json'} records other adapter weights" in other.stderr
    weights.unlink()
    refused = cli("calibrate", str(older), check=False)
    assert refused.returncode == 2 and "the run kept no adapter to calibrate" in refused.stderr
