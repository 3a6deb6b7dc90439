"""What the machine can do: the best matmul rate any library here reaches, and a process's peak memory."""

from __future__ import annotations

import importlib.util
import math
import resource
import time

import numpy as np
import torch

from yelp_lora.modeling.hardware import cpu_flags


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


def onnx_matmul_peak(size: int, repeats: int = 10, int8: bool = False) -> float:
    """Best FLOP/s of ONNX Runtime's own MLAS kernels on two size x size matrices: fp32 MatMul, or with
    int8 the MatMulInteger (uint8 activations x int8 weights, int32 sums) its dynamic int8 path runs."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if int8:
        weight = numpy_helper.from_array(rng.integers(-127, 128, (size, size), dtype=np.int8), "b")
        node, a_type, c_type = helper.make_node("MatMulInteger", ["a", "b"], ["c"]), TensorProto.UINT8, TensorProto.INT32
        a = rng.integers(0, 256, (size, size), dtype=np.uint8)
    else:
        weight = numpy_helper.from_array(rng.standard_normal((size, size), dtype=np.float32), "b")
        node, a_type, c_type = helper.make_node("MatMul", ["a", "b"], ["c"]), TensorProto.FLOAT, TensorProto.FLOAT
        a = rng.standard_normal((size, size), dtype=np.float32)
    graph = helper.make_graph(
        [node], "matmul", [helper.make_tensor_value_info("a", a_type, [size, size])],
        [helper.make_tensor_value_info("c", c_type, [size, size])], [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    best = math.inf
    for _ in range(repeats + 1):
        started = time.perf_counter()
        session.run(["c"], {"a": a})
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def measure_peak(size: int, device: torch.device) -> dict[str, float]:
    """The best matmul rate any library here reaches: on CPUs, torch's fp32 GEMM (MKL) can trail
    ONNX Runtime's own (measured 232 against 500 GFLOP/s at 2048x2048 on a 2-core AMD EPYC), so both are tried.
    On CPUs with ONNX Runtime, also its int8 GEMM: int8 paths are measured against it, not against bf16."""
    fp32 = matmul_peak(torch.float32, size, device)
    peaks = {"bf16": matmul_peak(torch.bfloat16, size, device)}
    if device.type == "cpu" and importlib.util.find_spec("onnxruntime") is not None:
        fp32 = max(fp32, onnx_matmul_peak(size))
        peaks["int8"] = onnx_matmul_peak(size, int8=True)
    return {"fp32": fp32, **peaks}


# CPU flags (Linux /proc/cpuinfo names) that decide each precision's fastest matmul instructions, best first.
PRECISION_INSTRUCTIONS = {
    "fp32": (("avx512f", "AVX-512"), ("avx2", "AVX2")),
    "bf16": (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX-512 BF16"), ("avx512f", "AVX-512 (bf16 converted)"),
             ("avx2", "AVX2 (bf16 converted)")),
    "int8": (("amx_int8", "AMX-INT8"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"), ("avx2", "AVX2")),
}


def instruction_sets(flags: set[str] | None = None) -> dict[str, str]:
    """The best matmul instructions this CPU offers each precision (what its peak can use), and the
    vector level torch's own kernels were dispatched to."""
    flags = cpu_flags() if flags is None else flags
    chosen = {
        precision: next((name for flag, name in options if flag in flags), "unknown")
        for precision, options in PRECISION_INSTRUCTIONS.items()
    }
    return {**chosen, "torch_kernels": torch.backends.cpu.get_cpu_capability()}
