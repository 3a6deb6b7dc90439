"""What the machine can do: the best matmul rate any library here reaches, and a process's peak memory."""

from __future__ import annotations

import importlib.util
import math
import resource
import time

import numpy as np
import torch


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
