"""The decoding rule of the seed report: keep score >= 0.5, sort left to right, concatenate.

Training's evaluation, the export parity gate, the benchmarks and the reader all
call `decode_number`, so "accuracy" means the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULT_THRESHOLD = 0.5
NO_DIGIT = "-1"


def reading_order(boxes_xyxy, scores, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Indices of boxes with score >= threshold, sorted by left edge, ties by top edge.

    A box with no area (one that lay wholly in the letterbox padding, clipped to the image's
    edge) is not a digit of the image: the seed's torchvision pipeline clipped boxes to the
    image and dropped the empty ones inside the model; here clipping happens on the way back
    to image pixels, so the same rule applies here.
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    has_area = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    keep = np.flatnonzero((scores >= threshold) & has_area)
    order = np.lexsort((boxes[keep, 1], boxes[keep, 0]))  # last key is primary
    return keep[order]


def decode_number(boxes_xyxy, scores, digits, threshold: float = DEFAULT_THRESHOLD) -> str:
    """The whole number as a string (leading zeros kept), or "-1" when no box is kept."""
    order = reading_order(boxes_xyxy, scores, threshold)
    if order.size == 0:
        return NO_DIGIT
    digits = np.asarray(digits).reshape(-1)
    return "".join(str(int(d)) for d in digits[order])


@dataclass
class Prediction:
    """What the reader returns for one image: every detection plus the decoded number."""

    number: str
    boxes: np.ndarray = field(repr=False)  # (n, 4) x1 y1 x2 y2 in original-image pixels
    scores: np.ndarray = field(repr=False)  # (n,)
    digits: np.ndarray = field(repr=False)  # (n,) 0..9
    order: np.ndarray = field(repr=False)  # indices of the kept digits, in reading order

    @classmethod
    def from_detections(cls, boxes, scores, digits, threshold: float = DEFAULT_THRESHOLD):
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        digits = np.asarray(digits, dtype=np.int64).reshape(-1)
        order = reading_order(boxes, scores, threshold)
        number = "".join(str(int(d)) for d in digits[order]) if order.size else NO_DIGIT
        return cls(number, boxes, scores, digits, order)

    @property
    def digit_boxes(self) -> np.ndarray:
        """Boxes of the kept digits in reading order."""
        return self.boxes[self.order]
