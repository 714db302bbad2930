"""Which model file runs, and on which engine: `--model`, `--engine` and `--precision` resolved
to one file of an export and one Backend (runtime.contract) that runs it.

Engines: onnxruntime (ONNX files, CPU or CUDA), openvino (ONNX files or OpenVINO IR, CPU),
tensorrt (engines, CUDA), and a Triton server (triton:// URLs). `auto` picks TensorRT for an
export directory whose engine can run here, else ONNX Runtime; for a file, the engine its type
names (.engine -> TensorRT, .xml -> OpenVINO, .onnx -> ONNX Runtime).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from digit_reader.runtime.console import err
from digit_reader.runtime.contract import FILES, check_device, file_kind, openvino_file
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.modelcard import card_for
from digit_reader.runtime.triton_url import TritonTarget, is_triton_url, parse_url

ENGINES = ("auto", "onnxruntime", "openvino", "tensorrt")
ENGINE_OF_KIND = {"onnx": "onnxruntime", "engine": "tensorrt", "ir": "openvino"}
KINDS_OF_ENGINE = {"onnxruntime": ("onnx",), "openvino": ("onnx", "ir"), "tensorrt": ("engine",)}
NO_MODEL = (
    "no model given: pass --model FILE or set DIGIT_MODEL. Make one with "
    "`digit-train --preset nano --device cpu` then `digit-export RUN --out DIR`"
)


def resolve_model(
    model: str | os.PathLike | None,
    device: str = "auto",
    log: Callable[[str], None] = err,
    engine: str = "auto",
    precision: str | None = None,
) -> Path | TritonTarget:
    """--model, else $DIGIT_MODEL: a triton:// URL, a model file as named, or an export
    directory, in which `engine` and `precision` (default fp32) pick the file; with engine auto
    its TensorRT engine where that engine can run here (not with --device cpu), else its ONNX
    file, saying why on `log`."""
    model = model or os.environ.get("DIGIT_MODEL")
    if not model:
        raise UserError(NO_MODEL, code=2)
    if is_triton_url(model):
        return parse_url(model)
    path = Path(model)
    if path.is_dir():
        return _file_in(path, check_device(device), engine, precision or "fp32", log)
    if not path.is_file():
        raise UserError(f"{path}: no such model file", code=2)
    return path


def _file_in(directory: Path, device: str, engine: str, precision: str, log) -> Path:
    present = {p.name for p in directory.iterdir() if p.is_file()}
    if precision == "bf16" and engine != "openvino":
        raise UserError("--precision bf16 runs on OpenVINO's CPU plugin: add --engine openvino", 2)
    if engine == "openvino":
        name = openvino_file(present, precision)
        if name is None:
            raise UserError(f"{directory}: no {precision} ONNX file or OpenVINO IR here", code=2)
        return directory / name
    onnx, engine_file = FILES[("onnx", precision)], directory / FILES[("engine", precision)]
    if engine == "tensorrt":
        return _usable_engine(engine_file, device)
    if engine_file.is_file() and device != "cpu":  # auto: the engine where it can run here
        reason = _engine_problem(engine_file)
        if reason is None:
            return engine_file
        if onnx in present:
            log(f"digit-read: not using {engine_file}: {reason}; reading with {onnx}")
    if onnx in present:
        return directory / onnx
    raise UserError(
        f"{directory}: no {onnx} or usable {engine_file.name} in this directory", code=2
    )


def _usable_engine(engine_file: Path, device: str) -> Path:
    """--engine tensorrt: this engine, or one line saying why it cannot run here."""
    if device == "cpu":
        raise UserError(f"{engine_file}: a TensorRT engine runs on CUDA only, not --device cpu", 2)
    if not engine_file.is_file():
        raise UserError(f"{engine_file.parent}: no {engine_file.name} in this directory", code=2)
    reason = _engine_problem(engine_file)
    if reason is not None:
        raise UserError(f"{engine_file}: cannot run here: {reason}", code=2)
    return engine_file


def _engine_problem(engine: Path) -> str | None:
    """Why this engine cannot run here (TensorRT, cuda-python, GPU, built for another), or None."""
    from digit_reader.runtime.trt_backend import probe, why_engine_cannot_run

    try:
        _, entry = card_for(engine)
    except UserError as e:
        return str(e).removeprefix(f"{engine}: ")
    return why_engine_cannot_run(entry, probe())


def engine_for(path: Path, engine: str) -> str:
    """The engine that runs `path`: as asked, if it reads that kind of file."""
    kind = file_kind(path.name)
    if engine == "auto":
        return ENGINE_OF_KIND[kind]
    if kind not in KINDS_OF_ENGINE[engine]:
        raise UserError(f"{path}: --engine {engine} does not read {kind} files", code=2)
    return engine


def running_precision(path: Path, entry: dict, engine: str, precision: str | None) -> str:
    """The precision that runs: the file's, or bf16 for an fp32 file on OpenVINO."""
    own = entry.get("precision", "fp32")
    if precision in (None, own):
        return own
    if precision == "bf16" and engine == "openvino" and own == "fp32":
        return "bf16"
    hint = " (bf16: OpenVINO from an fp32 file)" if precision == "bf16" else ""
    raise UserError(f"{path}: an {own} file; it cannot run as --precision {precision}{hint}", 2)


def open_backend(
    path: Path,
    entry: dict,
    device: str = "auto",
    log: Callable[[str], None] = err,
    threads: int | None = None,
    engine: str = "auto",
    precision: str | None = None,
    batch: int = 8,
):
    """The Backend that runs `path` (its model.json entry `entry`); `threads` caps the CPU
    engines' threads [all cores], `batch` sets OpenVINO's performance hint."""
    device = check_device(device)
    engine = engine_for(path, engine)
    running = running_precision(path, entry, engine, precision)
    if engine == "tensorrt":
        if device == "cpu":
            raise UserError(f"{path}: a TensorRT engine runs on CUDA only, not --device cpu", 2)
        from digit_reader.runtime.trt_backend import TensorRTBackend

        return TensorRTBackend(path, entry, device)
    if engine == "openvino":
        if device.startswith("cuda"):
            raise UserError(f"--engine openvino runs on the CPU, not --device {device}", code=2)
        from digit_reader.runtime.openvino_backend import OpenVinoBackend

        return OpenVinoBackend(path, running, batch=batch, threads=threads, log=log)
    from digit_reader.runtime.ort_backend import OrtBackend

    return OrtBackend(path, device, threads=threads, log=log, precision=running)
