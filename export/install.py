"""Putting a gated export in place: files move from the temporary directory into the output
directory, files of an older export that this one does not have go, model.json comes last."""

from __future__ import annotations

import os
from pathlib import Path

from digit_reader.export.defaults import CALIB_CACHE
from digit_reader.runtime.contract import CARD_NAME, FILES, file_kind, ir_weights
from digit_reader.runtime.modelcard import ModelCard


def companions(name: str) -> list[str]:
    """The files that travel with a model file: an IR's weights, the int8 calibration cache."""
    if file_kind(name) == "ir":
        return [ir_weights(name)]
    if name == FILES[("onnx", "int8")]:
        return [CALIB_CACHE]
    return []


def install(tmp: Path, out: Path, card: ModelCard) -> None:
    """Move the gated files from `tmp` into `out`, drop files of an older export, write the card.

    model.json goes first out and last in: between the two, a reader finds no card and refuses.
    """
    (out / CARD_NAME).unlink(missing_ok=True)
    keep = [n for name in card.files for n in (name, *companions(name))]
    for name in FILES.values():
        for old in (name, *companions(name)):
            if old not in keep:
                (out / old).unlink(missing_ok=True)
    for name in keep:
        os.replace(tmp / name, out / name)
    card.save(out / CARD_NAME)
