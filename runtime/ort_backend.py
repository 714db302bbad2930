"""ONNX Runtime backend: runs the exported graph on the CPU or with ORT's CUDA provider.

ORT's TensorRT provider is never asked for: it builds an engine per new input shape at run
time, uncached, so a row labelled "onnxruntime" would time TensorRT after minutes of building;
the project's own engines (digit-export --engine) are the TensorRT path. ORT falls back to the
CPU without an error when CUDA cannot start, so the providers in use are checked after the
session exists.

An int8 model (model.json says so) is given to the CPU provider in its CPU form
(runtime/int8_cpu.py, made in memory at load): the file as written is TensorRT's graph, which
ONNX Runtime's CPU provider runs only about as fast as fp32. The CUDA provider takes the file
as it is.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from digit_reader.runtime.console import err
from digit_reader.runtime.contract import INPUT_NAME, OUTPUT_NAMES, check_device, device_index
from digit_reader.runtime.cpu_features import int8_saturates
from digit_reader.runtime.errors import BackendError, UserError, one_line

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
# fp32 means fp32: the CUDA provider runs fp32 matrix products in TF32 unless told otherwise,
# and the graphs were gated in fp32 (export gate, digit-bench parity).
CUDA_OPTIONS = {"use_tf32": "0"}


def choose_providers(available: list[str], device: str) -> list:
    """ORT's provider list for `device` (auto, cpu, cuda or cuda:N) among those it has."""
    device = check_device(device)
    if device == "cpu" or (device == "auto" and CUDA not in available):
        return [CPU]
    if CUDA not in available:
        raise UserError(
            f"--device {device}: this onnxruntime has no CUDA provider (available: "
            f"{', '.join(available)}); install onnxruntime-gpu instead of onnxruntime",
            code=2,
        )
    options = dict(CUDA_OPTIONS)
    if ":" in device:
        options["device_id"] = str(device_index(device))
    return [(CUDA, options), CPU]


def provider_note(device: str, requested: list, in_use: list[str]) -> str | None:
    """Raise when --device cuda ended on the CPU; say so when auto did; None when as asked."""
    wanted_cuda = any(p == CUDA or (isinstance(p, tuple) and p[0] == CUDA) for p in requested)
    if not wanted_cuda or CUDA in in_use:
        return None
    if device.startswith("cuda"):
        raise UserError(
            f"--device {device}: ONNX Runtime could not start its CUDA provider (its messages "
            "above say why: CUDA or cuDNN libraries missing or mismatched; `pip install "
            "'digit-reader[gpu]'` brings them) and would run on the CPU",
            code=2,
        )
    return "ONNX Runtime's CUDA provider could not start; running on the CPU"


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


def session_options(ort, threads: int, configure: Callable | None = None):
    """Every optimisation, `threads` intra-op threads, ORT's own log at errors only."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if configure is not None:
        configure(options)
    return options


def preload_cuda_libraries(ort) -> None:
    """Load the CUDA and cuDNN libraries that onnxruntime-gpu[cuda,cudnn] installs as NVIDIA
    wheels, where this onnxruntime has `preload_dlls` (1.21+): a torch-free process has no
    other way to find them, and without them the CUDA provider silently does not start."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    with contextlib.redirect_stdout(sys.stderr), contextlib.suppress(Exception):
        preload()


def _session(ort, path, options, providers, cpu_form: bool):
    source = str(path)
    if cpu_form:
        try:
            from digit_reader.runtime import int8_cpu
        except ImportError:
            raise UserError(
                f"{path}: an int8 model on the CPU needs the onnx package: "
                "pip install 'digit-reader[cpu]'",
                code=2,
            ) from None
        try:
            source = int8_cpu.load_cpu_form(path)
        except Exception as e:  # onnx's DecodeError and friends for a damaged file
            raise UserError(f"{path}: cannot read it as an ONNX graph ({e})", code=2) from None
    # ORT's Python layer prints its provider fallback to stdout, which carries the CSV
    with contextlib.redirect_stdout(sys.stderr):
        try:
            session = ort.InferenceSession(source, options, providers=providers)
        except Exception as e:  # ORT raises its own exception types for bad files
            raise UserError(f"{path}: ONNX Runtime cannot load it ({e})", code=2) from None
    # at run time ORT would print an EP failure to stdout and retry on the CPU
    session.disable_fallback()
    return session


class OrtBackend:
    """One InferenceSession behind runtime.contract's Backend protocol."""

    def __init__(
        self,
        path: str | Path,
        device: str = "auto",
        threads: int | None = None,
        log: Callable[[str], None] = err,
        precision: str | None = None,
        int8_cpu_form: bool = True,
        configure: Callable | None = None,
    ):
        """`precision` is the file's (model.json); with int8 on the CPU provider the session
        gets the CPU form unless `int8_cpu_form` is False (the file as is, TensorRT's
        semantics). `configure(options)` may adjust the SessionOptions (profiling)."""
        ort = import_onnxruntime()
        self.threads = threads or os.cpu_count() or 1
        options = session_options(ort, self.threads, configure)
        providers = choose_providers(ort.get_available_providers(), device)
        if providers != [CPU]:
            preload_cuda_libraries(ort)
        rewrite = precision == "int8" and int8_cpu_form
        self.cpu_form = rewrite and providers == [CPU]
        self.session = _session(ort, path, options, providers, self.cpu_form)
        note = provider_note(device, providers, self.session.get_providers())
        if note:
            log(note)
            if rewrite and not self.cpu_form:  # CUDA could not start: the CPU runs it
                self.cpu_form = True
                self.session = _session(ort, path, options, [CPU], True)
        self.providers = self.session.get_providers()
        batch_dim = self.session.get_inputs()[0].shape[0]
        self.max_batch = batch_dim if isinstance(batch_dim, int) else None
        form = ""
        if self.cpu_form:  # uint8 weights where the CPU's int8 kernels would saturate
            form = ", int8 CPU form" + (", uint8 weights" if int8_saturates() else "")
        self.name = f"onnxruntime ({self.providers[0]}{form})"

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The four outputs; a provider failure (ORT's EPFail, e.g. a CUDA illegal memory
        access) or any run-time error is a BackendError naming the provider and the batch: the
        reader then loses that batch only, and ORT never retries it silently elsewhere."""
        try:
            outputs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
        except Exception as e:  # ORT's own exception types (EPFail, Fail, InvalidArgument)
            raise BackendError(
                f"onnxruntime ({self.providers[0]}) failed on a batch of {len(images)} "
                f"image(s): {type(e).__name__}: {one_line(e)}"
            ) from None
        return dict(zip(OUTPUT_NAMES, outputs, strict=True))

    def end_profiling(self) -> str:
        """The profile file of a session whose options enabled profiling (`configure`)."""
        return self.session.end_profiling()

    def close(self) -> None:
        """Drop the session (ONNX Runtime frees it, and its thread pool, when unreferenced)."""
        self.session = None
