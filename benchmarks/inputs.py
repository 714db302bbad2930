"""What a benchmark feeds a model: images through that model's own preprocessing contract (its
model.json's canvas and sharpen), exactly as digit-read prepares them. Every benchmark builds
its inputs here, so none measures other pixels than the reader sees."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from digit_reader.runtime.modelcard import ModelCard
from digit_reader.runtime.reader import Prepared, prepare


def batch_of(paths: list[Path], batch: int) -> list[Path]:
    """`batch` images, the given ones repeated as needed."""
    return [paths[i % len(paths)] for i in range(batch)]


def prepared(card: ModelCard, paths: list) -> list[Prepared]:
    """Each image as the reader prepares it for this model (canvas, scale, original size)."""
    return [prepare(p, card.canvas, card.sharpen) for p in paths]


def canvases(card: ModelCard, paths: list) -> np.ndarray:
    """uint8 [N, 3, H, W]: the model's input for these images."""
    return np.ascontiguousarray(np.stack([p.canvas for p in prepared(card, paths)]))
