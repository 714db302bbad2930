"""TensorRT backend: a serialized engine run with cuda-python buffers, no torch.

Written from TensorRT's Python API documentation and samples/python (common_runtime.py);
NOT EXECUTED HERE (no GPU, no tensorrt on the development machines). Every decision (can
TensorRT run here and why not, does an engine fit this machine, which batch fits the profile)
is a plain function, and the buffer plumbing runs on the CPU against a fake tensorrt/cudart in
tests/test_tensorrt_units.py.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digit_reader.runtime.contract import INPUT_NAME, OUTPUT_NAMES, device_index
from digit_reader.runtime.errors import BackendError, UserError

MIN_TENSORRT_MAJOR = 10  # strongly typed networks, execute_async_v3, ROIAlign_TRT v2
GPU_EXTRA = "pip install 'digit-reader[gpu]'"


class CudaError(RuntimeError):
    """A cuda-python call failed; the message names the CUDA error and says what it means."""


def import_cudart():
    """cuda-python's runtime API: cuda.bindings (cuda-python >= 12.6; the only name in 13)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise UserError(f"{NO_CUDA_PYTHON}: {GPU_EXTRA}", code=2) from None
    return cudart


NOT_INSTALLED = "tensorrt is not installed"
NO_CUDA_PYTHON = "cuda-python is not installed"


def load_tensorrt():
    """(the tensorrt module or None, why it cannot be used or None). A missing tensorrt
    package is "not installed"; a package whose import fails (its native libraries missing,
    libnvinfer/libnvonnxparser of another version) is installed but cannot load, with the
    ImportError's own words: installing the package again would not help."""
    try:
        import tensorrt
    except ModuleNotFoundError as e:
        if e.name == "tensorrt":
            return None, NOT_INSTALLED
        return None, f"tensorrt is installed but cannot load: {e}"
    except ImportError as e:  # e.g. libnvonnxparser.so.11: cannot open shared object file
        return None, f"tensorrt is installed but cannot load: {e}"
    return tensorrt, None


def import_tensorrt():
    """(tensorrt, cudart) or UserError (2) saying which is missing and what to do."""
    trt, problem = load_tensorrt()
    if trt is None:
        hint = f"{GPU_EXTRA} on an NVIDIA machine" if problem == NOT_INSTALLED else "fix it"
        raise UserError(
            f"{problem}: {hint}, or read with the ONNX model (model.onnx) instead", code=2
        )
    return trt, import_cudart()


def cuda_error_text(err, cudart=None) -> str:
    """`cudaErrorX: what it means` for a cuda-python error code (an IntEnum)."""
    name = getattr(err, "name", None) or f"CUDA error {int(getattr(err, 'value', err))}"
    text = ""
    if cudart is not None:
        try:
            text = cudart.cudaGetErrorString(err)[1]
            text = text.decode() if isinstance(text, bytes) else str(text)
        except Exception:  # a description is a nicety; the name is what matters
            text = ""
    hint = {
        "cudaErrorInsufficientDriver": "the NVIDIA driver is missing or older than this "
        "cuda-python needs (13.x wants a CUDA 13 driver; use cuda-python 12.x with an older one)",
        "cudaErrorNoDevice": "no NVIDIA GPU is visible (check CUDA_VISIBLE_DEVICES)",
    }.get(name, "")
    return "; ".join(p for p in (f"{name}: {text}" if text else name, hint) if p)


def cuda_call(result, cudart=None):
    """cuda-python calls return (err, *values); raise CudaError on error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(getattr(err, "value", err)) != 0:
        raise CudaError(cuda_error_text(err, cudart))
    return values[0] if len(values) == 1 else values


def gpu_properties(cudart, device: int = 0) -> tuple[str, str]:
    """(name, compute capability "major.minor") of a CUDA device; raises CudaError."""
    props = cuda_call(cudart.cudaGetDeviceProperties(device), cudart)
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.rstrip("\x00"), f"{props.major}.{props.minor}"


@dataclass(frozen=True)
class TensorRTProbe:
    """What this machine offers TensorRT, and in one line why it cannot run here (or None)."""

    version: str | None = None
    gpus: int = 0
    gpu: str | None = None
    capability: str | None = None
    problem: str | None = NOT_INSTALLED


def probe() -> TensorRTProbe:
    """Import tensorrt and cuda-python and ask CUDA for its devices; never raises."""
    trt, problem = load_tensorrt()
    if trt is None:
        return TensorRTProbe(problem=problem)
    version = trt.__version__
    if int(version.split(".")[0]) < MIN_TENSORRT_MAJOR:
        too_old = f"TensorRT {version} is too old; digit-reader needs TensorRT >= 10"
        return TensorRTProbe(version, problem=too_old)
    try:
        cudart = import_cudart()
    except UserError:
        return TensorRTProbe(version, problem=NO_CUDA_PYTHON)
    try:
        count = cuda_call(cudart.cudaGetDeviceCount(), cudart)
        if not count:
            return TensorRTProbe(version, problem="no NVIDIA GPU is visible")
        name, capability = gpu_properties(cudart)
    except CudaError as e:
        return TensorRTProbe(version, problem=f"CUDA cannot start: {e}")
    return TensorRTProbe(version, int(count), name, capability, problem=None)


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


def why_engine_cannot_run(entry: dict, found: TensorRTProbe) -> str | None:
    """Why an engine with this model.json entry cannot run on the machine `found` describes."""
    if found.problem:
        return found.problem
    return engine_mismatch(entry, found.version, found.gpu)


def profile_problem(batch: int, profile: tuple[int, int, int]) -> str | None:
    """Why a batch of `batch` images does not fit the engine's (min, opt, max) batch profile."""
    low, _, high = profile
    if low <= batch <= high:
        return None
    return f"batch {batch} is outside the engine's batch profile {low}..{high} (min..max)"


class TensorRTBackend:
    """One engine, one context, one stream; pinned host and device buffers sized for max batch."""

    def __init__(self, path: str | Path, entry: dict, device: str = "cuda"):
        self.path = Path(path)
        self.buffers: dict = {}
        self.stream = None
        trt, cudart = import_tensorrt()
        self.trt, self.cudart = trt, cudart
        found = probe()
        reason = why_engine_cannot_run(entry, found)
        if reason:
            raise UserError(f"{path}: cannot run here: {reason}", code=2)
        cuda_call(cudart.cudaSetDevice(device_index(device)), cudart)
        logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(logger, "")  # RoiAlign comes from the ROIAlign_TRT plugin
        runtime = trt.Runtime(logger)
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise UserError(
                f"{path}: TensorRT {trt.__version__} on {found.gpu} cannot deserialize this "
                f"engine (built with TensorRT {entry.get('tensorrt', '?')} for "
                f"{entry.get('gpu', '?')})",
                code=2,
            )
        low, opt, high = (int(s[0]) for s in self.engine.get_tensor_profile_shape(INPUT_NAME, 0))
        self.profile = (low, opt, high)
        self.max_batch = high
        self.context = self.engine.create_execution_context()
        if self.context is None:  # TensorRT returns None when it cannot allocate one
            raise UserError(
                f"{path}: TensorRT could not create an execution context for batch profile "
                f"{low}/{opt}/{high} on {found.gpu} (out of GPU memory?)",
                code=2,
            )
        self.stream = cuda_call(cudart.cudaStreamCreate(), cudart)
        self.name = f"TensorRT {trt.__version__} ({found.gpu})"
        max_input = self.engine.get_tensor_profile_shape(INPUT_NAME, 0)[2]
        for name in (INPUT_NAME, *OUTPUT_NAMES):
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            shape = list(max_input if name == INPUT_NAME else self.engine.get_tensor_shape(name))
            shape[0] = self.max_batch
            size = int(np.prod(shape))
            nbytes = size * dtype.itemsize
            host_ptr = cuda_call(cudart.cudaMallocHost(nbytes), cudart)
            raw = (ctypes.c_uint8 * nbytes).from_address(int(host_ptr))
            host = np.frombuffer(raw, dtype=np.uint8).view(dtype)  # a uint8 view works for fp16
            device = cuda_call(cudart.cudaMalloc(nbytes), cudart)
            self.buffers[name] = (host_ptr, host, device, dtype)
            if not self.context.set_tensor_address(name, int(device)):
                raise UserError(f"{path}: the engine has no tensor {name!r}", code=2)

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The four outputs; a CUDA error on the way is a BackendError (that batch is lost)."""
        try:
            return self._run(images)
        except CudaError as e:
            raise BackendError(f"TensorRT: {e} (a batch of {len(images)} image(s))") from None

    def _run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        cudart = self.cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        n = images.shape[0]
        problem = profile_problem(n, self.profile)
        if problem or not self.context.set_input_shape(INPUT_NAME, tuple(images.shape)):
            raise UserError(
                f"{self.path}: TensorRT refused input shape {tuple(images.shape)}: "
                + (problem or f"batch profile {self.profile[0]}..{self.profile[2]}"),
                code=2,
            )
        _, host, device, _ = self.buffers[INPUT_NAME]
        host[: images.size] = images.reshape(-1)
        cuda_call(
            cudart.cudaMemcpyAsync(device, host.ctypes.data, images.nbytes, h2d, self.stream),
            cudart,
        )
        if not self.context.execute_async_v3(self.stream):
            raise BackendError(f"TensorRT: execute_async_v3 failed on a batch of {n} image(s)")
        out = {}
        for name in OUTPUT_NAMES:
            _, host, device, dtype = self.buffers[name]
            shape = tuple(self.context.get_tensor_shape(name))
            size = int(np.prod(shape))
            nbytes = size * dtype.itemsize
            cuda_call(
                cudart.cudaMemcpyAsync(host.ctypes.data, device, nbytes, d2h, self.stream),
                cudart,
            )
            out[name] = (host, size, shape)
        cuda_call(cudart.cudaStreamSynchronize(self.stream), cudart)
        return {
            name: host[:size].reshape(shape).copy() for name, (host, size, shape) in out.items()
        }

    def close(self) -> None:
        """Free the buffers and destroy the stream (best effort, as TensorRT's samples do)."""
        cudart = getattr(self, "cudart", None)
        if cudart is None:
            return
        for host_ptr, _, device, _ in self.buffers.values():
            cudart.cudaFreeHost(host_ptr)
            cudart.cudaFree(device)
        self.buffers = {}
        if self.stream is not None:
            cudart.cudaStreamDestroy(self.stream)
            self.stream = None

    def __del__(self):
        self.close()
