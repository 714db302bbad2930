"""TensorRT backend: a serialized engine run with cuda-python buffers, no torch.

Written from TensorRT's Python API documentation and samples/python (common_runtime.py);
NOT EXECUTED HERE (no GPU, no tensorrt on the development machines). The decisions that
can be tested without a GPU live in plain functions below and are tested on the CPU.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from digit_reader.runtime.errors import UserError
from digit_reader.runtime.modelcard import INPUT_NAME, OUTPUT_NAMES


def engine_mismatch(built: dict, tensorrt_version: str, gpu_name: str | None) -> str | None:
    """Why an engine built as `built` (its model.json entry) cannot run here, or None.

    Engines are tied to the TensorRT version and the GPU they were built for.
    """
    want_trt, want_gpu = built.get("tensorrt"), built.get("gpu")
    if want_trt and want_trt != tensorrt_version:
        return f"built with TensorRT {want_trt}, this machine has TensorRT {tensorrt_version}"
    if want_gpu and gpu_name and want_gpu != gpu_name:
        return f"built for {want_gpu}, this machine has {gpu_name}"
    return None


def import_cudart():
    """cuda-python's runtime API: cuda.bindings (cuda-python >= 12.6; the only name in 13)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise UserError(
                "cuda-python is not installed: pip install 'digit-reader[gpu]'", code=2
            ) from None
    return cudart


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise UserError(
            "tensorrt is not installed: pip install 'digit-reader[gpu]' on an NVIDIA machine, "
            "or read with the ONNX model (model.onnx) instead",
            code=2,
        ) from None
    return tensorrt, import_cudart()


def cuda_call(result):
    """cuda-python calls return (err, *values); raise on error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(getattr(err, "value", err)) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else values


def gpu_properties(cudart, device: int = 0) -> tuple[str, str]:
    """(name, compute capability "major.minor") of a CUDA device; raises if there is none."""
    props = cuda_call(cudart.cudaGetDeviceProperties(device))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.rstrip("\x00"), f"{props.major}.{props.minor}"


class TensorRTBackend:
    """One engine, one context, one stream; pinned host and device buffers sized for max batch."""

    def __init__(self, path: str | Path, entry: dict):
        trt, cudart = import_tensorrt()
        self.trt, self.cudart = trt, cudart
        gpu = self._gpu_name()
        reason = engine_mismatch(entry, trt.__version__, gpu)
        if reason:
            raise UserError(f"{path}: {reason}; rebuild it here with digit-export --engine", code=2)
        logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(logger, "")  # RoiAlign comes from the ROIAlign_TRT plugin
        runtime = trt.Runtime(logger)
        self.engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise UserError(
                f"{path}: TensorRT {trt.__version__} on {gpu} cannot deserialize this engine "
                f"(built with TensorRT {entry.get('tensorrt', '?')} for {entry.get('gpu', '?')})",
                code=2,
            )
        self.context = self.engine.create_execution_context()
        self.stream = cuda_call(cudart.cudaStreamCreate())
        _, _, max_shape = self.engine.get_tensor_profile_shape(INPUT_NAME, 0)
        self.max_batch = int(max_shape[0])
        self.name = f"TensorRT {trt.__version__} ({gpu})"
        self.buffers = {}
        for name in (INPUT_NAME, *OUTPUT_NAMES):
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            shape = (
                list(max_shape) if name == INPUT_NAME else list(self.engine.get_tensor_shape(name))
            )
            shape[0] = self.max_batch
            nbytes = int(np.prod(shape)) * dtype.itemsize
            host_ptr = cuda_call(cudart.cudaMallocHost(nbytes))
            ctype = ctypes.POINTER(np.ctypeslib.as_ctypes_type(dtype))
            host = np.ctypeslib.as_array(ctypes.cast(host_ptr, ctype), (int(np.prod(shape)),))
            device = cuda_call(cudart.cudaMalloc(nbytes))
            self.buffers[name] = (host_ptr, host, device, dtype)
            self.context.set_tensor_address(name, int(device))

    def _gpu_name(self) -> str:
        try:
            return gpu_properties(self.cudart)[0]
        except Exception:
            raise UserError("TensorRT needs an NVIDIA GPU and none is visible", code=2) from None

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        cudart = self.cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        n = images.shape[0]
        _, host, device, _ = self.buffers[INPUT_NAME]
        host[: images.size] = images.reshape(-1)
        self.context.set_input_shape(INPUT_NAME, tuple(images.shape))
        cuda_call(cudart.cudaMemcpyAsync(device, host.ctypes.data, images.nbytes, h2d, self.stream))
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        out = {}
        for name in OUTPUT_NAMES:
            _, host, device, dtype = self.buffers[name]
            shape = tuple(self.context.get_tensor_shape(name))
            size = int(np.prod(shape))
            nbytes = size * dtype.itemsize
            cuda_call(cudart.cudaMemcpyAsync(host.ctypes.data, device, nbytes, d2h, self.stream))
            out[name] = (host, size, shape)
        cuda_call(cudart.cudaStreamSynchronize(self.stream))
        result = {
            name: host[:size].reshape(shape).copy() for name, (host, size, shape) in out.items()
        }
        assert result["num_dets"].shape[0] == n
        return result

    def __del__(self):
        cudart = getattr(self, "cudart", None)
        for host_ptr, _, device, _ in getattr(self, "buffers", {}).values():
            cudart.cudaFreeHost(host_ptr)
            cudart.cudaFree(device)
