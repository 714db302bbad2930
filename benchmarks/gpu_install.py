"""How `make gpu-check` gets what it runs, without the network by default.

    python3 benchmarks/gpu_install.py [--wheels DIR] [--venv DIR] [--dry-run]

GPU servers are often offline and already carry a CUDA build of torch. So by default the check
runs with this interpreter: it must have torch (with CUDA) and torchvision, and only the project
itself is installed (`pip install --no-deps --no-build-isolation -e .`). `--wheels DIR` also
installs the packages the steps want and this interpreter lacks, from DIR alone (`--no-index
--find-links DIR`, one package at a time: a wheel missing from DIR skips that package's steps,
not the check). `--venv DIR` is the online path: a new venv with torch and the project's
extras from PyPI. This file imports nothing of digit-reader: it runs before the project is
installed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# what the steps use: distribution name -> import name (a step whose package is missing is
# skipped; these are the ones worth bringing as wheels)
WANTED = {
    "numpy": "numpy",
    "pillow": "PIL",
    "click": "click",
    "tqdm": "tqdm",
    "matplotlib": "matplotlib",
    "h5py": "h5py",
    "pycocotools": "pycocotools",
    "onnx": "onnx",
    "onnxscript": "onnxscript",
    "onnxruntime-gpu": "onnxruntime",
    "cuda-python": "cuda.bindings",
    "tensorrt": "tensorrt",
    "nvidia-modelopt": "modelopt",
    "pytest": "pytest",
}
NO_CUDA_TORCH = (
    "gpu-check: {python} has no CUDA build of torch with torchvision ({found}); use a python "
    "that has one, or `make gpu-check VENV=1` where PyPI is reachable"
)


def torch_of(python: str) -> tuple[bool, str]:
    """(whether `python` has torch with CUDA and torchvision, what it has)."""
    code = "import torch, torchvision; print(torch.__version__, torch.version.cuda)"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if done.returncode:
        lines = done.stderr.strip().splitlines()
        return False, lines[-1] if lines else "torch cannot be imported"
    version, cuda = done.stdout.split()
    return cuda != "None", f"torch {version}, CUDA {cuda}"


def importable(python: str, dist: str) -> bool:
    """Whether `python` has `dist` working (onnxruntime-gpu: ONNX Runtime with its CUDA
    provider, not the CPU build that shares its module name)."""
    code = f"import {WANTED[dist]}"
    if dist == "onnxruntime-gpu":
        code += "; assert 'CUDAExecutionProvider' in onnxruntime.get_available_providers()"
    return subprocess.run([python, "-c", code], capture_output=True).returncode == 0


def _has_wheel(wheels: Path, dist: str) -> bool:
    return any(wheels.glob(dist.replace("-", "_") + "-*.whl"))


def commands(python: str, wheels: Path | None, venv: Path | None, lacking: list[str]):
    """The pip commands, in order, and whether each may fail without stopping the rest."""
    if venv is not None:
        pip = str(venv / "bin" / "pip")
        return [
            ([sys.executable, "-m", "venv", str(venv)], False),
            ([pip, "install", "-q", "torch", "torchvision", "-e", f"{ROOT}[gpu,train,export,dev]"],
             False),
        ]  # fmt: skip
    project = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    out = [([*project, "-e", str(ROOT)], False)]
    if wheels is not None:
        offline = [python, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels)]
        for name in lacking:
            if name == "onnxruntime-gpu" and _has_wheel(wheels, name):
                # the CPU build shares its module name: it must go first, and only if the GPU
                # build is there to replace it
                out.append(([python, "-m", "pip", "uninstall", "-q", "-y", "onnxruntime"], True))
            out.append(([*offline, name], True))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, help="install missing packages from here only")
    parser.add_argument("--venv", type=Path, help="build this venv from PyPI instead")
    parser.add_argument("--python", default=sys.executable, help="the interpreter to use")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    if args.venv is None:
        ok, found = torch_of(args.python)
        if not ok:
            print(NO_CUDA_TORCH.format(python=args.python, found=found), file=sys.stderr)
            return 2
    lacking = [d for d in WANTED if args.wheels and not importable(args.python, d)]
    for argv_, may_fail in commands(args.python, args.wheels, args.venv, lacking):
        print("gpu-check: " + " ".join(argv_), file=sys.stderr, flush=True)
        if args.dry_run:
            continue
        done = subprocess.run(argv_)
        if done.returncode and not may_fail:
            return done.returncode
        if done.returncode:
            print(f"gpu-check: {argv_[-1]} not in {args.wheels}: its steps will be skipped",
                  file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
