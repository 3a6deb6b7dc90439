"""OpenVINO on CPU (`--backend openvino`): the fused fp32 ONNX graph `onnx_backend` exports and
caches for the adapter, compiled by OpenVINO's CPU plugin in fp32, or in bf16 with `--bf16`
(AVX-512 BF16 or AMX kernels). Its fp32 logits match ONNX Runtime's within 1e-5 (docs/performance.md)."""

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

    Compiled twice, as OnnxClassifier opens two sessions: one stream over every core, for a lone
    batch (a single request's latency), and one stream per core for batches run side by side from
    `concurrent_workers` threads (`concurrent()`). Each calling thread keeps its own infer request.
    """

    device = torch.device("cpu")
    first_token_last_layer = True  # the exported graph's last layer runs on [CLS] only

    def __init__(self, path: Path, *, bf16: bool = False, threads: int | None = None, streams: int = 1):
        import openvino

        threads = threads or torch.get_num_threads()
        core = openvino.Core()
        self._compiled = core.compile_model(core.read_model(str(path)), "CPU", {
            "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",  # OpenVINO's own default is bf16 where the CPU has it
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": streams,
        })
        self.input_names = {port.get_any_name() for port in self._compiled.inputs}
        self._requests = threading.local()
        self.concurrent_workers = threads
        side_by_side = threads > 1 and streams == 1
        self._side_by_side = OpenVinoClassifier(path, bf16=bf16, threads=threads, streams=threads) if side_by_side else self

    def concurrent(self) -> "OpenVinoClassifier":
        """The one-stream-per-core model, safe to call from `concurrent_workers` threads at once."""
        return self._side_by_side

    def __call__(self, **batch: torch.Tensor) -> SimpleNamespace:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self._compiled.create_infer_request()
        request.infer({name: value.numpy() for name, value in batch.items() if name in self.input_names})
        return SimpleNamespace(logits=torch.from_numpy(request.get_output_tensor(0).data.copy()))


def load_openvino_classifier(adapter_dir: Path, *, bf16: bool, base: str | None = None, origin: Path | None = None):
    """(OpenVinoClassifier, tokenizer) for an adapter directory, exporting its ONNX graph first if needed."""
    if importlib.util.find_spec("openvino") is None:
        raise ModelError("backend 'openvino' needs OpenVINO: pip install 'yelp-lora[openvino]'")
    path = exported_model(adapter_dir, "onnx", base=base, origin=origin)
    return OpenVinoClassifier(path, bf16=bf16), load_tokenizer(tokenizer_source(adapter_dir))
