"""ONNX Runtime backend: runs the exported graph on CPU, CUDA or the TensorRT execution provider."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from digit_reader.runtime.errors import UserError
from digit_reader.runtime.modelcard import INPUT_NAME, OUTPUT_NAMES

# TensorRT EP first, then CUDA, then CPU: ORT hands each node to the first provider that takes it.
PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(available: list[str], device: str) -> list[str]:
    """Providers for `device` ("auto", "cpu" or "cuda") among those this onnxruntime build has."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    gpu = [p for p in PREFERENCE[:2] if p in available]
    if device == "cuda" and not gpu:
        raise UserError(
            "--device cuda: this onnxruntime has no CUDA provider (available: "
            f"{', '.join(available)}); install onnxruntime-gpu instead of onnxruntime",
            code=2,
        )
    return gpu + ["CPUExecutionProvider"]


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UserError(
            "onnxruntime is not installed: pip install 'digit-reader[cpu]' "
            "(or 'digit-reader[gpu]' on an NVIDIA machine)",
            code=2,
        ) from None
    return onnxruntime


class OrtBackend:
    """One InferenceSession; __call__ maps a uint8 NCHW batch to the four output arrays."""

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None):
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.log_severity_level = 3
        providers = choose_providers(ort.get_available_providers(), device)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # ORT raises its own exception types for bad files
            raise UserError(f"{path}: ONNX Runtime cannot load it ({e})", code=2) from None
        self.providers = self.session.get_providers()
        batch_dim = self.session.get_inputs()[0].shape[0]
        self.max_batch = batch_dim if isinstance(batch_dim, int) else None
        self.name = f"onnxruntime ({self.providers[0]})"

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
        return dict(zip(OUTPUT_NAMES, outputs, strict=True))
