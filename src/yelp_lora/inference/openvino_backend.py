"""OpenVINO on CPU (`--backend openvino`): the fused fp32 ONNX graph `onnx_backend` exports and
caches for the adapter, compiled by OpenVINO's CPU plugin in fp32, or in bf16 with `--bf16`
(AVX-512 BF16 or AMX kernels). Its fp32 answers match the torch backend's (tests/test_bench.py)."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from types import SimpleNamespace

import torch

from yelp_lora.artifacts import tokenizer_source
from yelp_lora.errors import ModelError
from yelp_lora.inference.onnx_backend import exported_model
from yelp_lora.modeling.base import load_tokenizer


class OpenVinoClassifier:
    """An OpenVINO compiled model called like a transformers classifier: model(**batch).logits.

    One stream over every core, one call at a time (a lock): two threads each running their own
    infer request on a two-stream compiled model, as ONNX Runtime's one-thread sessions run side by
    side, deadlocked in one of three test runs (both threads stuck in OpenVINO's input copy, the
    process idle), so OpenVINO runs reviews one after another.
    """

    device = torch.device("cpu")
    first_token_last_layer = True  # the exported graph's last layer runs on [CLS] only

    def __init__(self, path: Path, *, bf16: bool = False):
        import openvino

        core = openvino.Core()
        try:
            self._compiled = core.compile_model(core.read_model(str(path)), "CPU", {
                "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",  # OpenVINO's own default is bf16 where the CPU has it
                "INFERENCE_NUM_THREADS": torch.get_num_threads(),  # one per core, or OMP_NUM_THREADS as torch reads it
                "NUM_STREAMS": 1,
            })
        except RuntimeError as err:  # OpenVINO reports an unreadable graph or an unsupported hint this way
            raise ModelError(f"OpenVINO could not compile {path} ({'bf16' if bf16 else 'fp32'}): "
                             f"{str(err).strip().splitlines()[0]}; --backend onnx runs the same graph") from err
        self.input_names = {port.get_any_name() for port in self._compiled.inputs}
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, **batch: torch.Tensor) -> SimpleNamespace:
        with self._lock:
            self._request.infer({name: value.numpy() for name, value in batch.items() if name in self.input_names})
            logits = self._request.get_output_tensor(0).data.copy()
        return SimpleNamespace(logits=torch.from_numpy(logits))


def load_openvino_classifier(adapter_dir: Path, *, bf16: bool, base: str | None = None, origin: Path | None = None):
    """(OpenVinoClassifier, tokenizer) for an adapter directory, exporting its ONNX graph first if needed."""
    if importlib.util.find_spec("openvino") is None:
        raise ModelError("backend 'openvino' needs OpenVINO: pip install 'yelp-lora[openvino]'")
    path = exported_model(adapter_dir, "onnx", base=base, origin=origin)
    return OpenVinoClassifier(path, bf16=bf16), load_tokenizer(tokenizer_source(adapter_dir))
