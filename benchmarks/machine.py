"""What a benchmark ran on: CPU, cores, GPU, library versions, and the machine's matmul rate."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from pathlib import Path

LIBRARIES = ("torch", "torchvision", "onnxruntime", "onnxruntime-gpu", "onnx", "tensorrt", "numpy")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
        "gpu": gpu_name(),
        "python": platform.python_version(),
        "versions": versions,
    }


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """fp32 GFLOP/s of torch's CPU matmul at the current thread count: the machine's ceiling."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9
