"""Decisions around the CUDA, ONNX Runtime CUDA and TensorRT paths, made on the CPU.

No GPU and no tensorrt here: ONNX Runtime is given a stub session that reports the providers a
GPU machine with broken CUDA libraries reports, and `tensorrt` is a stand-in module, so what is
tested is our logic around those libraries, never the libraries themselves. What only a GPU can
show is in the tests marked `gpu`/`tensorrt` (tests/test_export.py) and in `make gpu-check`.
"""

import shutil
import sys
import types

import pytest
from click.testing import CliRunner

from digit_reader.runtime import ort_backend, trt_backend
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.modelcard import ModelCard
from digit_reader.runtime.reader import resolve_model
from digit_reader.runtime.trt_backend import (
    TensorRTProbe,
    cuda_call,
    profile_problem,
    why_engine_cannot_run,
)


class StubOrt:
    """onnxruntime-gpu on a machine whose CUDA libraries do not load: it lists CUDA, prints
    its fallback on stdout (as ORT's Python layer does) and runs on the CPU."""

    def __init__(self, available, in_use):
        self.available, self.in_use, self.requested = available, in_use, None
        self.GraphOptimizationLevel = types.SimpleNamespace(ORT_ENABLE_ALL=99)
        stub = self

        class Session:
            def __init__(self, path, options, providers):
                stub.requested = providers
                print("*************** EP Error ***************")  # ORT does this on stdout

            def get_providers(self):
                return stub.in_use

            def disable_fallback(self):
                stub.fallback = False

            def get_inputs(self):
                return [types.SimpleNamespace(shape=["batch", 3, 64, 128])]

        self.InferenceSession = Session

    def SessionOptions(self):
        return types.SimpleNamespace()

    def get_available_providers(self):
        return self.available


GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_cuda_that_silently_fell_back_to_the_cpu_is_an_error(monkeypatch, capsys):
    stub = StubOrt(GPU_BUILD, ["CPUExecutionProvider"])
    monkeypatch.setattr(ort_backend, "import_onnxruntime", lambda: stub)
    with pytest.raises(UserError, match="could not start its CUDA provider") as e:
        ort_backend.OrtBackend("m.onnx", "cuda")
    assert e.value.code == 2
    assert stub.requested == [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    out = capsys.readouterr()
    assert out.out == ""  # ORT's own print went to stderr: stdout is the CSV
    assert "EP Error" in out.err


def test_auto_says_which_provider_runs(monkeypatch):
    said = []
    stub = StubOrt(GPU_BUILD, ["CPUExecutionProvider"])
    monkeypatch.setattr(ort_backend, "import_onnxruntime", lambda: stub)
    backend = ort_backend.OrtBackend("m.onnx", "auto", log=said.append)
    assert backend.name == "onnxruntime (CPUExecutionProvider)"
    assert said == ["ONNX Runtime's CUDA provider could not start; running on the CPU"]
    stub.in_use = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    said.clear()
    assert ort_backend.OrtBackend("m.onnx", "auto", log=said.append).name.endswith(
        "(CUDAExecutionProvider)"
    )
    assert said == []


def test_cuda_errors_are_named():
    class Err(int):
        name = "cudaErrorInsufficientDriver"

    class Cudart:
        @staticmethod
        def cudaGetErrorString(err):
            return 0, b"CUDA driver version is insufficient for CUDA runtime version"

    with pytest.raises(trt_backend.CudaError) as e:
        cuda_call((Err(35), None), Cudart)
    text = str(e.value)
    assert text.startswith("cudaErrorInsufficientDriver: CUDA driver version is insufficient")
    assert "driver is missing or older" in text
    assert cuda_call((0, 7)) == 7


def test_probe_reports_the_cuda_error_not_just_no_gpu(monkeypatch):
    class Err(int):
        name = "cudaErrorInsufficientDriver"

    cudart = types.SimpleNamespace(
        cudaGetDeviceCount=lambda: (Err(35), None),
        cudaGetErrorString=lambda err: (0, b"CUDA driver version is insufficient"),
    )
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.13.0"))
    monkeypatch.setattr(trt_backend, "import_cudart", lambda: cudart)
    found = trt_backend.probe()
    assert found.version == "10.13.0" and found.gpus == 0
    assert found.problem.startswith("CUDA cannot start: cudaErrorInsufficientDriver")
    cudart.cudaGetDeviceCount = lambda: (0, 0)
    assert trt_backend.probe().problem == "no NVIDIA GPU is visible"


def test_engine_runs_only_where_it_was_built():
    here = TensorRTProbe("10.13.0", 1, "NVIDIA A10", "8.6", problem=None)
    entry = {"tensorrt": "10.13.0", "gpu": "NVIDIA A10"}
    assert why_engine_cannot_run(entry, here) is None
    assert "NVIDIA L4" in why_engine_cannot_run({**entry, "gpu": "NVIDIA L4"}, here)
    assert "10.9.0" in why_engine_cannot_run({**entry, "tensorrt": "10.9.0"}, here)
    assert why_engine_cannot_run(entry, TensorRTProbe()) == "tensorrt is not installed"


def test_batch_outside_the_profile_is_named():
    assert profile_problem(8, (1, 8, 32)) is None
    assert profile_problem(33, (1, 8, 32)) == (
        "batch 33 is outside the engine's batch profile 1..32 (min..max)"
    )
    assert "batch 1 " in profile_problem(1, (2, 8, 32))


def _export_with_foreign_engine(src, dst):
    """A copy of an export with a model.engine built for another GPU and TensorRT."""
    shutil.copytree(src, dst)
    engine = dst / "model.engine"
    engine.write_bytes(b"serialized engine for another machine")
    card = ModelCard.load(dst / "model.json")
    card.add_file(engine, "fp32", tensorrt="10.13.0", gpu="NVIDIA H100", source="model.onnx")
    card.save(dst / "model.json")
    return dst


@pytest.mark.slow
def test_unusable_engine_falls_back_to_onnx_and_says_why(
    export_dir, synth_root, tmp_path, monkeypatch
):
    """The issue's acceptance check: an importable tensorrt, an engine that cannot run here."""
    from digit_reader.runtime.cli import main

    export = _export_with_foreign_engine(export_dir, tmp_path / "export")
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.13.0"))
    monkeypatch.setattr(
        trt_backend, "probe", lambda: TensorRTProbe("10.13.0", problem="no NVIDIA GPU is visible")
    )
    result = CliRunner().invoke(main, [str(synth_root / "test"), "--model", str(export)])
    assert result.exit_code == 0, result.stderr
    engine = export / "model.engine"
    assert f"not using {engine}: no NVIDIA GPU is visible; reading with model.onnx" in (
        result.stderr
    )
    assert len(result.stdout.splitlines()) == 1 + 12  # header + every test image
    assert "12 read, 0 failed" in result.stderr

    # a usable probe but an engine built elsewhere: the same fallback, another reason
    monkeypatch.setattr(
        trt_backend, "probe", lambda: TensorRTProbe("10.13.0", 1, "NVIDIA A10", "8.6", None)
    )
    said = []
    assert resolve_model(export, "auto", said.append) == export / "model.onnx"
    assert "built for NVIDIA H100, this machine has NVIDIA A10" in said[0]
    assert resolve_model(export, "cpu", said.append) == export / "model.onnx"

    # named explicitly, the engine is not replaced: one line, exit 2
    result = CliRunner().invoke(
        main, [str(synth_root / "test"), "--model", str(export / "model.engine")]
    )
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")


def test_an_old_driver_gets_no_install_hint():
    """The driver hint's own words mention cuda-python: that is no package to install."""
    from digit_reader.export.tensorrt_engine import why_no_engine

    hint = trt_backend.cuda_error_text(
        type("E", (int,), {"name": "cudaErrorInsufficientDriver"})(35)
    )
    old_driver = TensorRTProbe("11.4.0", problem=f"CUDA cannot start: {hint}")
    assert "cuda-python" in old_driver.problem  # the trap: the hint names it
    assert why_no_engine(old_driver) == old_driver.problem
    assert "pip install" not in why_no_engine(old_driver)
    assert "pip install" in why_no_engine(
        TensorRTProbe("11.4.0", problem="cuda-python is not installed")
    )


def _unloadable_tensorrt(tmp_path, monkeypatch):
    """A tensorrt package whose import fails as the real one does here: tensorrt-cu13 11.4's
    __init__ does `from tensorrt_bindings import *`, and tensorrt-cu13-bindings 11.4.0.106
    without its native libraries raises this ImportError (seen with the real wheel)."""
    package = tmp_path / "site" / "tensorrt"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "raise ImportError('libnvonnxparser.so.11: cannot open shared object file: No such file "
        "or directory', name='tensorrt')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)


def test_tensorrt_installed_but_unloadable_is_not_called_not_installed(tmp_path, monkeypatch):
    _unloadable_tensorrt(tmp_path, monkeypatch)
    found = trt_backend.probe()
    assert found.problem == (
        "tensorrt is installed but cannot load: libnvonnxparser.so.11: cannot open shared "
        "object file: No such file or directory"
    )
    with pytest.raises(UserError) as e:
        trt_backend.import_tensorrt()
    assert "installed but cannot load: libnvonnxparser.so.11" in str(e.value)
    assert "not installed" not in str(e.value) and e.value.code == 2


def test_tensorrt_absent_is_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ModuleNotFoundError
    assert trt_backend.probe().problem == "tensorrt is not installed"


def test_cuda_sessions_preload_the_nvidia_wheels_libraries(monkeypatch):
    """onnxruntime-gpu[cuda,cudnn] installs CUDA and cuDNN as wheels; a torch-free process
    finds them only through onnxruntime.preload_dlls(), which must run before the session."""
    stub = StubOrt(GPU_BUILD, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    calls = []
    stub.preload_dlls = lambda: calls.append(stub.requested)
    monkeypatch.setattr(ort_backend, "import_onnxruntime", lambda: stub)
    ort_backend.OrtBackend("m.onnx", "cuda")
    assert calls == [None]  # called once, before any session was asked for
    ort_backend.OrtBackend("m.onnx", "cpu")
    assert len(calls) == 1  # not for a CPU session


def test_the_gpu_extra_brings_cuda_and_cudnn_for_onnxruntime():
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    gpu = pyproject["project"]["optional-dependencies"]["gpu"]
    assert any(d.startswith("onnxruntime-gpu[cuda,cudnn]>=1.21") for d in gpu), gpu
