"""DeployableDetector -> model.onnx with torch's torch.export-based exporter (`dynamo=True`).

The graph has static shapes but for the batch axis, so torch.export traces it without graph
breaks; the one op torch.onnx cannot translate by itself, `digit_reader::nms_keep`, brings its
own translation (export/nms.py). The TorchScript exporter (`dynamo=False`) is deprecated and
not needed.
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings
from pathlib import Path

import torch

from digit_reader.export.defaults import OPSET
from digit_reader.export.graph import DeployableDetector
from digit_reader.export.nms import ONNX_TRANSLATIONS
from digit_reader.runtime import atomic
from digit_reader.runtime.contract import INPUT_NAME, OUTPUT_NAMES

MAX_BATCH = 1024  # upper bound torch.export may assume for the batch axis


def export_onnx(detector: DeployableDetector, path: str | Path, opset: int = OPSET) -> None:
    """Write the graph to `path` atomically: input uint8 [batch, 3, H, W], four outputs."""
    h, w = detector.canvas
    example = torch.zeros(2, 3, h, w, dtype=torch.uint8)  # 2: torch.export specialises 0 and 1
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    log = io.StringIO()
    # torch.onnx reports its steps on stdout, which belongs to data; keep it for errors only
    with contextlib.redirect_stdout(log), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                detector.eval(),
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes=({0: batch},),
                custom_translation_table=ONNX_TRANSLATIONS,
                opset_version=opset,
                external_data=False,
                optimize=True,
            )
        except Exception:
            sys.stderr.write(log.getvalue())
            raise
    with atomic.atomic_path(path) as tmp:
        program.save(str(tmp))
