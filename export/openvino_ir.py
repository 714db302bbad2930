"""`digit-export --openvino`: OpenVINO IR (model.xml + model.bin, model.int8.xml + .bin) beside
the ONNX files, each held to the parity gate like every other form.

The IR is read from the gated ONNX file with OpenVINO's ONNX frontend (`Core.read_model`) and
saved with `save_model(..., compress_to_fp16=False)`: save_model compresses weights to fp16 by
default, and fp32 IR must stay fp32 (the gate requires identical numbers). `convert_model` would
make the same graph, but it goes through OpenVINO's conversion tool, which sends usage telemetry
unless the user opted out: an export must not reach the network.

The fp32 IR is gated twice where the CPU has bf16 (AVX512_BF16 or AMX): in fp32 (the fp32 rule)
and as OpenVINO runs it with the bf16 hint (the bf16 rule); on a CPU without bf16 the entry says
that bf16 was not gated. The int8 IR (from model.int8.onnx, the QDQ graph as written) is held to
the int8 rule, on CPUs with VNNI; without it OpenVINO's int8 kernels saturate
(runtime/openvino_backend.py), so the IR is written with a note that it was not gated.
"""

from __future__ import annotations

from pathlib import Path

from digit_reader.export.gate import Gate
from digit_reader.runtime.console import err
from digit_reader.runtime.contract import FILES, Form
from digit_reader.runtime.cpu_features import int8_saturates
from digit_reader.runtime.modelcard import ModelCard
from digit_reader.runtime.openvino_backend import (
    OpenVinoBackend,
    has_bf16,
    import_openvino,
    shared_core,
)

GATE_BATCH = 8
NOT_GATED_INT8 = (
    "not gated here: this CPU has no VNNI, on which OpenVINO's int8 kernels saturate; "
    "gate it on one that has (digit-read refuses OpenVINO int8 here)"
)


def convert(onnx_path: Path, xml_path: Path) -> None:
    """Write the IR of `onnx_path` at `xml_path` (and its .bin), weights as they are."""
    ov = import_openvino()
    model = shared_core().read_model(str(onnx_path))
    ov.save_model(model, str(xml_path), compress_to_fp16=False)


def version() -> str:
    return import_openvino().__version__.split("-")[0]


def write_and_gate(precisions: list[str], tmp: Path, card: ModelCard, gate: Gate) -> dict:
    """IR of the fp32 and int8 graphs in `tmp`, gated and entered in the card; returns the
    parity summary of each OpenVINO form."""
    summary = {}
    for precision in [p for p in precisions if ("ir", p) in FILES]:
        onnx_name, xml = FILES[("onnx", precision)], FILES[("ir", precision)]
        convert(tmp / onnx_name, tmp / xml)
        form = Form("openvino", precision, xml)
        extra = {"source": onnx_name, "openvino": version()}
        if precision == "int8" and int8_saturates():
            extra["not_gated"] = NOT_GATED_INT8
            err(f"parity {form.label}: {NOT_GATED_INT8}")
        else:
            checked = _check(gate, form, tmp)
            summary[form.label] = checked.summary()
            extra["parity"] = checked.summary()
            extra |= checked.figures() if precision == "int8" else {}
        if precision == "fp32":
            extra["bf16"] = _bf16(gate, tmp / xml, shared_core(), summary)
        card.add_file(tmp / xml, precision, **extra)
    return summary


def _check(gate: Gate, form: Form, tmp: Path):
    backend = OpenVinoBackend(tmp / form.file, form.precision, batch=GATE_BATCH)
    try:
        return gate.check(form, backend)
    finally:
        backend.close()


def _bf16(gate: Gate, xml: Path, core, summary: dict) -> dict:
    """The fp32 IR run in bf16, gated where this CPU computes in bf16; else why not."""
    if not has_bf16(core):
        cpu = core.get_property("CPU", "FULL_DEVICE_NAME")
        note = f"not gated: this CPU ({cpu}) has no bf16"
        err(f"parity OpenVINO bf16: {note}; digit-read refuses bf16 on such a CPU")
        return {"gated": False, "note": note}
    form = Form("openvino", "bf16", xml.name)
    checked = _check(gate, form, xml.parent)
    summary[form.label] = checked.summary()
    return {"gated": True, "parity": checked.summary(), **checked.figures()}
