"""The TensorRT engine builder's decisions, tested without TensorRT (which cannot run here)."""

import ctypes
import enum
import sys
import types

import numpy as np
import pytest

from digit_reader.export.tensorrt_engine import (
    BatchProfile,
    build_engine,
    network_flags,
    parser_errors,
    why_no_engine,
)
from digit_reader.runtime import trt_backend
from digit_reader.runtime.contract import Backend
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.trt_backend import TensorRTProbe


def test_engine_is_skipped_with_the_reason_and_what_to_install():
    assert "pip install 'digit-reader[gpu]'" in why_no_engine(TensorRTProbe())
    no_cuda_python = TensorRTProbe("10.13.0", problem="cuda-python is not installed")
    assert "pip install" in why_no_engine(no_cuda_python)
    no_gpu = TensorRTProbe("10.13.0", problem="no NVIDIA GPU is visible")
    assert why_no_engine(no_gpu) == "no NVIDIA GPU is visible"
    assert why_no_engine(TensorRTProbe("11.0.0", 1, "NVIDIA A10", "8.6", problem=None)) is None


def test_network_is_strongly_typed_where_tensorrt_has_the_flag():
    class TRT10(enum.IntEnum):
        EXPLICIT_BATCH = 0
        STRONGLY_TYPED = 1
        PREFER_AOT_PYTHON_PLUGINS = 2

    class TRT11(enum.IntEnum):  # strongly typed always; the member may be gone
        PREFER_AOT_PYTHON_PLUGINS = 2

    assert network_flags(TRT10) == 1 << 1  # and never EXPLICIT_BATCH (ignored since 10)
    assert network_flags(TRT11) == 0


def test_batch_profile_shapes_and_validation():
    assert BatchProfile(1, 8, 32).shapes((800, 1344)) == (
        (1, 3, 800, 1344),
        (8, 3, 800, 1344),
        (32, 3, 800, 1344),
    )
    with pytest.raises(UserError, match="min <= opt <= max") as e:
        BatchProfile(4, 2, 8).validate()
    assert e.value.code == 2


def test_parser_errors_name_the_node():
    class Error:
        def __init__(self, i):
            self.i = i

        def node(self):
            return self.i

        def node_operator(self):
            return "RoiAlign"

        def node_name(self):
            return f"node_roi_align_{self.i}"

        def desc(self):
            return "Plugin not found"

    class Parser:
        num_errors = 2

        def get_error(self, i):
            return Error(i)

    text = parser_errors(Parser())
    assert text.splitlines() == [
        "  node 0 (RoiAlign 'node_roi_align_0'): Plugin not found",
        "  node 1 (RoiAlign 'node_roi_align_1'): Plugin not found",
    ]


# --- a stand-in `tensorrt` and `cudart`: our calls around TensorRT, run on the CPU ------------
# They implement just the calls TensorRT's samples make, with host memory standing in for the
# GPU's, so the builder's flags and profile and the backend's buffer plumbing (shapes, dtypes,
# copies, profile checks, clean-up) run here. Whether TensorRT itself accepts them is for the
# tests marked `tensorrt` (tests/test_export.py) and `make gpu-check`.


CANVAS = (64, 128)
K = 5


class FakeCudart:
    """Host memory as device memory; every call returns (error, *values) like cuda-python."""

    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def __init__(self):
        self.blocks, self.freed, self.streams = {}, [], []

    def _alloc(self, nbytes):
        block = ctypes.create_string_buffer(nbytes)
        self.blocks[ctypes.addressof(block)] = block
        return 0, ctypes.addressof(block)

    cudaMallocHost = cudaMalloc = _alloc

    def cudaFreeHost(self, ptr):
        self.freed.append(ptr)
        return (0,)

    cudaFree = cudaFreeHost

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        ctypes.memmove(int(dst), int(src), nbytes)
        return (0,)

    def cudaStreamCreate(self):
        self.streams.append("open")
        return 0, len(self.streams)

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamDestroy(self, stream):
        self.streams[stream - 1] = "destroyed"
        return (0,)

    def cudaGetDeviceCount(self):
        return 0, 1

    def cudaSetDevice(self, device):
        self.device = device
        return (0,)

    def cudaGetDeviceProperties(self, device):
        return 0, types.SimpleNamespace(name=b"Fake GPU\x00", major=8, minor=6)


def fake_tensorrt(context_ok=True):
    """The classes and calls of tensorrt that build_engine and TensorRTBackend use."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.13.0"
    trt.calls = []
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.init_libnvinfer_plugins = lambda logger, ns: trt.calls.append("plugins")
    trt.BuilderFlag = types.SimpleNamespace(TF32="TF32", FP16="FP16", INT8="INT8")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    dtypes = {"images": np.uint8, "num_dets": np.int32, "labels": np.int32}
    shapes = {"num_dets": (-1,), "boxes": (-1, K, 4), "scores": (-1, K), "labels": (-1, K)}
    trt.nptype = lambda dt: dt

    class Config:
        def set_memory_pool_limit(self, pool, size):
            trt.calls.append(("workspace", size))

        def clear_flag(self, flag):
            trt.calls.append(("clear", flag))

        def set_flag(self, flag):
            trt.calls.append(("set", flag))

        def add_optimization_profile(self, profile):
            trt.calls.append(("profile", profile.shapes))

    class Profile:
        def set_shape(self, name, *shapes):
            self.shapes = (name, shapes)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            trt.calls.append(("network", flags))
            return "network"

        create_builder_config = staticmethod(Config)
        create_optimization_profile = staticmethod(Profile)

        def build_serialized_network(self, network, config):
            return b"plan bytes"

    class Parser:
        def __init__(self, network, logger):
            self.num_errors = 0

        def parse_from_file(self, path):
            return True

    class Context:
        def __init__(self):
            self.addr, self.batch = {}, None

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr
            return True

        def set_input_shape(self, name, shape):
            self.batch = shape[0]
            return 1 <= shape[0] <= 32

        def get_tensor_shape(self, name):
            return (self.batch, *shapes[name][1:])

        def execute_async_v3(self, stream):
            """'Inference': num_dets = the first pixel, each image's outputs its index."""
            n = self.batch
            images = np.ctypeslib.as_array(
                ctypes.cast(self.addr["images"], ctypes.POINTER(ctypes.c_uint8)),
                (n * 3 * CANVAS[0] * CANVAS[1],),
            ).reshape(n, 3, *CANVAS)
            for name, fill in (
                ("num_dets", images[:, 0, 0, 0].astype(np.int32)),
                ("boxes", np.arange(n, dtype=np.float32)[:, None, None] + np.zeros((K, 4))),
                ("scores", np.full((n, K), 0.75, np.float32)),
                ("labels", np.arange(n, dtype=np.int32)[:, None] + np.zeros(K, np.int32)),
            ):
                data = np.ascontiguousarray(fill, dtype=dtypes.get(name, np.float32))
                ctypes.memmove(self.addr[name], data.ctypes.data, data.nbytes)
            return True

    class Engine:
        def get_tensor_profile_shape(self, name, index):
            return [(b, 3, *CANVAS) for b in (1, 8, 32)]

        def create_execution_context(self):
            return Context() if context_ok else None

        def get_tensor_dtype(self, name):
            return dtypes.get(name, np.float32)

        def get_tensor_shape(self, name):
            return shapes[name]

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine()

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, Parser, Runtime
    return trt


@pytest.fixture
def fake_gpu(monkeypatch):
    cudart = FakeCudart()
    trt = fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_backend, "import_cudart", lambda: cudart)
    return trt, cudart


def test_builder_clears_tf32_sets_no_precision_flag_and_uses_the_profile(fake_gpu, tmp_path):
    trt, _ = fake_gpu
    onnx_path, plan = tmp_path / "model.onnx", tmp_path / "model.engine"
    onnx_path.write_bytes(b"graph")
    build_engine(onnx_path, plan, (800, 1344), BatchProfile(1, 8, 32), 2.0, log=lambda m: None)
    assert plan.read_bytes() == b"plan bytes"
    assert ("clear", "TF32") in trt.calls  # fp32 means fp32 (TF32 is on by default)
    assert not [c for c in trt.calls if c[0] == "set"]  # precision comes from the graph
    assert ("network", 1 << 1) in trt.calls  # strongly typed
    assert ("workspace", 2 << 30) in trt.calls
    assert ("profile", ("images", BatchProfile(1, 8, 32).shapes((800, 1344)))) in trt.calls


def test_backend_runs_a_batch_through_its_buffers_and_cleans_up(fake_gpu, tmp_path):
    _, cudart = fake_gpu
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan bytes")
    backend = trt_backend.TensorRTBackend(engine, {"tensorrt": "10.13.0", "gpu": "Fake GPU"})
    assert backend.max_batch == 32 and backend.name == "TensorRT 10.13.0 (Fake GPU)"
    assert isinstance(backend, Backend) and cudart.device == 0  # cudaSetDevice(0) for "cuda"
    images = np.zeros((3, 3, *CANVAS), np.uint8)
    images[:, 0, 0, 0] = [4, 1, 2]
    out = backend(images)
    assert out["num_dets"].tolist() == [4, 1, 2]
    assert out["boxes"].shape == (3, K, 4) and out["boxes"][2].max() == 2
    assert out["labels"].dtype == np.int32 and out["labels"][1].tolist() == [1] * K
    with pytest.raises(UserError, match=r"batch 33 is outside the engine's batch profile 1\.\.32"):
        backend(np.zeros((33, 3, *CANVAS), np.uint8))
    backend.close()
    assert cudart.streams == ["destroyed"] and len(cudart.freed) == 10  # 5 host + 5 device


def test_backend_refuses_when_no_context_can_be_made(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(context_ok=False))
    monkeypatch.setattr(trt_backend, "import_cudart", FakeCudart)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan bytes")
    with pytest.raises(UserError, match="could not create an execution context") as e:
        trt_backend.TensorRTBackend(engine, {})
    assert e.value.code == 2 and "1/8/32" in str(e.value)


def test_backend_refuses_an_engine_built_elsewhere(fake_gpu, tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan bytes")
    with pytest.raises(UserError, match="built for NVIDIA L4, this machine has Fake GPU"):
        trt_backend.TensorRTBackend(engine, {"tensorrt": "10.13.0", "gpu": "NVIDIA L4"})
