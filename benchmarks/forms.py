"""The exported forms a benchmark compares: every model file of an export directory, and why a
TensorRT form is skipped on this machine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from digit_reader.export.defaults import FILES
from digit_reader.export.tensorrt_engine import why_no_engine
from digit_reader.runtime.modelcard import CARD_NAME, ModelCard
from digit_reader.runtime.trt_backend import probe


@dataclass
class Form:
    backend: str  # "onnxruntime" or "TensorRT"
    precision: str  # "fp32", "fp16" or "int8"
    path: Path
    skip: str | None = None  # why this form cannot run here

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision}"


BACKENDS = ("onnxruntime", "TensorRT")


def exported_forms(export_dir: Path, device: str = "cpu") -> list[Form]:
    """ONNX Runtime fp32/fp16/int8 and TensorRT fp32/fp16/int8, in that order, each runnable or
    skipped; a precision whose ONNX graph was not exported is not listed."""
    card = ModelCard.load(export_dir / CARD_NAME)
    no_trt = why_no_engine(probe())
    if not no_trt and device == "cpu":
        no_trt = "TensorRT runs on CUDA only (--device cuda)"
    forms = []
    for backend in BACKENDS:
        for precision, (onnx_name, engine_name) in FILES.items():
            if onnx_name not in card.files:
                continue  # not exported in this precision: nothing to list
            name = onnx_name if backend == "onnxruntime" else engine_name
            path, skip = export_dir / name, None
            if backend == "TensorRT" and no_trt:
                skip = no_trt.split(" (")[0]  # the reason, without the install hint
            elif name not in card.files:
                skip = f"no {name} in the export (digit-export --engine builds it)"
            forms.append(Form(backend, precision, path, skip))
    return forms


def onnx_forms(export_dir: Path, wanted: set[str]) -> list[Form]:
    """The export's ONNX Runtime forms on the CPU, only those named in `wanted` if any."""
    forms = exported_forms(export_dir, "cpu")
    return [f for f in forms if f.backend == "onnxruntime" and (not wanted or f.name in wanted)]
