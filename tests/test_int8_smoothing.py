"""Int8 with SmoothQuant: the activation ranges `train` saves beside the adapter, and how the ONNX
export uses them (inference.onnx_backend.smooth_activations)."""

import shutil

import numpy as np
import onnx
import pytest
from support import review_texts

from yelp_lora.artifacts import INT8_CALIBRATION_FILE, tokenizer_source
from yelp_lora.errors import ModelError
from yelp_lora.inference.onnx_backend import UNFUSED_AT_LOAD, exported_model, smooth_activations
from yelp_lora.modeling.base import load_tokenizer
from yelp_lora.modeling.calibration import OBSERVED, load_activation_ranges, observed_key

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
    smooth_activations(model, load_activation_ranges(adapter))
    np.testing.assert_allclose(logits(model), plain, atol=1e-4)
    # Every matmul that reads all tokens: each layer's Q/K/V, and the other three of all but the
    # last layer, whose output projection and FFN read [CLS] alone.
    assert len(smoothing_nodes(model.graph)) == 6 + 3 * 5


def test_int8_export_smooths_with_the_adapters_ranges_and_without_them_plainly(tiny_run, tmp_path):
    adapter = tiny_run / "adapter"
    layers = 2  # the tiny BERT
    assert len(smoothing_nodes(onnx.load(exported_model(adapter, "onnx-int8")).graph)) == layers + 3 * (layers - 1)
    older = tmp_path / "adapter"  # an adapter trained before the ranges were saved
    shutil.copytree(adapter, older)
    (older / INT8_CALIBRATION_FILE).unlink()
    assert smoothing_nodes(onnx.load(exported_model(older, "onnx-int8")).graph) == []
    (older / INT8_CALIBRATION_FILE).write_bytes(b"not a tensor file")
    with pytest.raises(ModelError, match=f"{INT8_CALIBRATION_FILE} is not a readable safetensors file"):
        exported_model(older, "onnx-int8")
