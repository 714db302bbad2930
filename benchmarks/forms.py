"""The forms a benchmark compares: every form an export can run (runtime.contract's
`export_forms`), each with the file it reads and why it cannot run on this machine, if so."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from digit_reader.export.tensorrt_engine import why_no_engine
from digit_reader.runtime.backends import open_backend
from digit_reader.runtime.contract import CARD_NAME, Form, export_forms
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.modelcard import ModelCard
from digit_reader.runtime.trt_backend import probe


@dataclass(frozen=True)
class Candidate:
    """One form of an export, the file it reads, and why it is skipped here (None: it runs)."""

    form: Form
    path: Path
    skip: str | None = None

    def open(self, card: ModelCard, device: str, batch: int = 8, threads: int | None = None):
        """The Backend that runs this form (runtime.backends, as digit-read opens it)."""
        entry = card.files[self.path.name]
        engine, precision = self.form.engine, self.form.precision
        return open_backend(
            self.path, entry, device, lambda m: None, threads, engine, precision, batch
        )


def _openvino_problem(device: str) -> tuple[str | None, bool]:
    """(why OpenVINO cannot run here or None, whether its CPU computes in bf16)."""
    if device.startswith("cuda"):
        return "OpenVINO runs on the CPU (--device cpu)", False
    from digit_reader.runtime.openvino_backend import has_bf16, shared_core

    try:
        core = shared_core()
    except UserError as e:
        return str(e).split(":")[0], False
    return None, has_bf16(core)


def _openvino_precision_problem(precision: str, bf16: bool) -> str | None:
    from digit_reader.runtime.cpu_features import int8_saturates

    if precision == "bf16" and not bf16:
        return "this CPU has no bf16"
    if precision == "int8" and int8_saturates():
        return "this CPU has no VNNI: OpenVINO's int8 kernels saturate on it"
    return None


def _tensorrt_problem(device: str) -> str | None:
    no_trt = why_no_engine(probe())
    if no_trt:
        return no_trt.split(" (")[0]  # the reason, without the install hint
    return "TensorRT runs on CUDA only (--device cuda)" if device == "cpu" else None


def exported_forms(export_dir: Path, device: str = "cpu") -> list[Candidate]:
    """Every form of the export in table order (ONNX Runtime, OpenVINO, TensorRT; by
    precision), each runnable or skipped with the reason."""
    card = ModelCard.load(export_dir / CARD_NAME)
    no_ov, bf16 = _openvino_problem(device)
    no_trt = _tensorrt_problem(device)
    out = []
    for form in export_forms(card.files):
        skip = None
        if form.engine == "openvino":
            skip = no_ov or _openvino_precision_problem(form.precision, bf16)
        elif form.engine == "tensorrt":
            skip = no_trt
            if not skip and form.file not in card.files:
                skip = f"no {form.file} in the export (digit-export --engine builds it)"
        out.append(Candidate(form, export_dir / form.file, skip))
    return out


def cpu_forms(export_dir: Path, wanted: set[Form]) -> list[Candidate]:
    """The export's ONNX Runtime and OpenVINO forms that run on this CPU, only those of the
    kinds in `wanted` (engine and precision) if any."""
    found = [c for c in exported_forms(export_dir, "cpu") if c.form.engine != "tensorrt"]
    found = [c for c in found if not c.skip]
    return [c for c in found if not wanted or any(c.form.same_kind(w) for w in wanted)]
