"""What a benchmark ran on: CPU, cores, GPU, library versions, and the machine's matmul rate."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from pathlib import Path

from digit_reader.runtime.cpu_features import cpu_flags

LIBRARIES = (
    "torch",
    "torchvision",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnx",
    "openvino",
    "tensorrt",
    "numpy",
)
# the vector extensions int8 and bf16 speed depend on, as /proc/cpuinfo names them
ISA = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa() -> list[str]:
    """Which of ISA this CPU has (empty where /proc/cpuinfo cannot be read)."""
    flags = cpu_flags()
    return [f for f in ISA if f in flags]


def describe_machine(m: dict) -> str:
    """A result's machine in one phrase: "AMD EPYC, 2 cores, avx2[, the GPU]"."""
    parts = [m["cpu"], f"{m['cores']} cores"]
    if m.get("isa"):
        parts.append(" ".join(m["isa"]))
    if m.get("gpu"):
        parts.append(m["gpu"])
    return ", ".join(parts)


def gpu_name() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine() -> dict:
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "isa": cpu_isa(),
        "gpu": gpu_name(),
        "python": platform.python_version(),
        "versions": versions,
    }


def matmul_rates(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """fp32 GFLOP/s of an n x n matmul at the current thread count, per library here.

    Why both: torch's CPU matmul (MKL, AVX2 kernels on AMD) reached about half of what ONNX
    Runtime's MLAS (AVX-512) does on this machine, so torch's rate alone is no ceiling.
    """
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    rates = {"torch": _best_rate(_torch_matmul(a), n, repeats)}
    try:
        rates["onnxruntime"] = _best_rate(_ort_matmul(a), n, repeats)
    except ImportError:
        pass
    return rates


def _best_rate(call, n: int, repeats: int) -> float:
    call()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def _torch_matmul(a):
    import torch

    x = torch.from_numpy(a)
    return lambda: x @ x


def _ort_matmul(a):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    n = a.shape[0]
    io = [helper.make_tensor_value_info(v, TensorProto.FLOAT, [n, n]) for v in "abc"]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm", io[:2], io[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = _torch_threads()
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    return lambda: session.run(None, {"a": a, "b": a})


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
