"""`python -m digit_reader.benchmarks.gpu_env OUT.json`: what this machine offers the GPU paths,
as `make gpu-check`'s first step records it: the GPU (name, memory, driver), the CUDA runtime,
the versions of torch, torchvision, onnxruntime, tensorrt and cuda-bindings, and which ONNX
Runtime providers really start (a one-node session, its providers read after creation: the
list a build advertises says nothing about the machine). Each probe that fails says why; none
stops the others.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from importlib import metadata

from digit_reader.runtime import atomic

DISTRIBUTIONS = (
    "torch",
    "torchvision",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
    "tensorrt-cu13-bindings",
    "cuda-python",
    "cuda-bindings",
    "nvidia-modelopt",
    "pycocotools",
    "openvino",
    "digit-reader",
)


def versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in DISTRIBUTIONS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def nvidia_smi() -> str | None:
    """name, driver, memory and compute capability of each GPU, as nvidia-smi reports them."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    query = "--query-gpu=name,driver_version,memory.total,compute_cap"
    done = subprocess.run([smi, query, "--format=csv,noheader"], capture_output=True, text=True)
    return done.stdout.strip() or done.stderr.strip()


def torch_cuda() -> dict:
    try:
        import torch
    except ImportError as e:
        return {"problem": f"torch cannot be imported: {e}"}
    out = {"cuda_build": torch.version.cuda, "available": torch.cuda.is_available()}
    if out["available"]:
        props = torch.cuda.get_device_properties(0)
        out |= {
            "device": props.name,
            "memory_gb": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "cudnn": torch.backends.cudnn.version(),
        }
    return out


def ort_providers() -> dict:
    """The providers ONNX Runtime lists, and those a session asking for CUDA really got."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError as e:
        return {"problem": f"onnx/onnxruntime cannot be imported: {e}"}
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    available = ort.get_available_providers()
    wanted = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    session = ort.InferenceSession(model.SerializeToString(), providers=wanted)
    return {"available": available, "started": session.get_providers()}


def tensorrt() -> dict:
    from digit_reader.runtime.trt_backend import probe

    found = probe()
    return {"version": found.version, "gpu": found.gpu, "problem": found.problem}


def cuda_runtime() -> dict:
    from digit_reader.runtime.trt_backend import CudaError, cuda_call, import_cudart

    try:
        cudart = import_cudart()
        runtime = cuda_call(cudart.cudaRuntimeGetVersion(), cudart)
        driver = cuda_call(cudart.cudaDriverGetVersion(), cudart)
    except (CudaError, Exception) as e:  # cuda-python missing, no driver
        return {"problem": str(e).splitlines()[0]}
    return {"runtime": runtime, "driver_api": driver}


def probe_all() -> dict:
    env = {"platform": platform.platform(), "versions": versions(), "nvidia_smi": nvidia_smi()}
    for name, probe in (
        ("torch", torch_cuda),
        ("cuda", cuda_runtime),
        ("onnxruntime", ort_providers),
        ("tensorrt", tensorrt),
    ):
        try:
            env[name] = probe()
        except Exception as e:  # one probe's failure is a finding, not the end of the step
            env[name] = {
                "problem": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            }
    return env


if __name__ == "__main__":
    found = probe_all()
    atomic.write_text(sys.argv[1], json.dumps(found, indent=2) + "\n")
    print(json.dumps(found))
