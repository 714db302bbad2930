"""TensorRT engines of a gated export: one per ONNX graph, each held to the same parity gate.

NOT EXECUTED HERE (no GPU on the development machines): the build is export/tensorrt_engine.py,
the backend that runs each engine for its gate is runtime/trt_backend.py.
"""

from __future__ import annotations

from pathlib import Path

from digit_reader.export.gate import Gate
from digit_reader.export.tensorrt_engine import build_engine
from digit_reader.runtime.console import err
from digit_reader.runtime.contract import FILES, Form
from digit_reader.runtime.modelcard import ModelCard


def build_and_gate(opts, tmp: Path, found, card: ModelCard, gate: Gate, device: str) -> str:
    """Build the TensorRT engines in `tmp` and hold each to the gate; enter them in the card.

    Returns "built ..." or, without --engine, why no engine was written (any failure: parser,
    builder, runtime or parity); with --engine a failure raises.
    """
    from digit_reader.runtime.trt_backend import TensorRTBackend

    entry = {"tensorrt": found.version, "gpu": found.gpu, "compute_capability": found.capability}
    built = {}
    try:
        for precision in opts.precisions:
            form = Form("tensorrt", precision, FILES[("engine", precision)])
            onnx_name = FILES[("onnx", precision)]
            build_engine(
                tmp / onnx_name,
                tmp / form.file,
                card.canvas,
                opts.profile,
                opts.workspace_gib,
                opts.timing_cache,
                log=err,
            )
            backend = TensorRTBackend(tmp / form.file, entry, device)
            try:
                built[form] = (onnx_name, gate.check(form, backend))
            finally:
                backend.close()
    except Exception as e:  # UserError/ExportFailed, or TensorRT's own RuntimeErrors
        for precision in opts.precisions:
            (tmp / FILES[("engine", precision)]).unlink(missing_ok=True)
        if opts.engine:
            raise
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return f"TensorRT engine not written: {first}"
    card.engine_batch = {"min": opts.profile.min, "opt": opts.profile.opt, "max": opts.profile.max}
    for form, (onnx_name, checked) in built.items():
        figures = checked.figures() if form.precision == "int8" else {}
        card.add_file(
            tmp / form.file,
            form.precision,
            source=onnx_name,
            parity=checked.summary(),
            **figures,
            **entry,
        )
    return f"built with TensorRT {found.version} on {found.gpu}"
