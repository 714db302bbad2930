"""The decoding rule of the seed report: keep score >= 0.5, sort left to right, concatenate.

Training's evaluation, the export parity gate, the benchmarks and the reader all hold their
detections as `Detections` and call `decode_number`, so "accuracy" means the same thing
everywhere.
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
    return _number(np.asarray(digits).reshape(-1), reading_order(boxes_xyxy, scores, threshold))


def _number(digits: np.ndarray, order: np.ndarray) -> str:
    return "".join(str(int(d)) for d in digits[order]) if order.size else NO_DIGIT


@dataclass
class Detections:
    """One image's detections, whichever form of the model made them (training's evaluation,
    the exported graph, the parity gate): the one type they are compared and scored in."""

    boxes: np.ndarray  # (n, 4) float32 x1 y1 x2 y2
    scores: np.ndarray  # (n,) float32
    digits: np.ndarray  # (n,) int64, 0..9

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.digits = np.asarray(self.digits, dtype=np.int64).reshape(-1)

    def number(self, threshold: float = DEFAULT_THRESHOLD) -> str:
        return decode_number(self.boxes, self.scores, self.digits, threshold)


def split_outputs(out: dict) -> list[Detections]:
    """The graph's padded outputs (num_dets, boxes, scores, labels) as one Detections per image,
    in the graph's pixels (the canvas)."""
    return [
        Detections(out["boxes"][i, :n], out["scores"][i, :n], out["labels"][i, :n])
        for i, n in enumerate(int(n) for n in np.asarray(out["num_dets"]).reshape(-1))
    ]


@dataclass
class Prediction:
    """What the reader returns for one image: every detection plus the decoded number."""

    number: str
    detections: Detections = field(repr=False)  # in original-image pixels
    order: np.ndarray = field(repr=False)  # indices of the kept digits, in reading order

    @classmethod
    def decode(cls, detections: Detections, threshold: float = DEFAULT_THRESHOLD):
        order = reading_order(detections.boxes, detections.scores, threshold)
        return cls(_number(detections.digits, order), detections, order)

    @classmethod
    def from_detections(cls, boxes, scores, digits, threshold: float = DEFAULT_THRESHOLD):
        return cls.decode(Detections(boxes, scores, digits), threshold)

    @property
    def boxes(self) -> np.ndarray:
        """(n, 4) x1 y1 x2 y2 in original-image pixels."""
        return self.detections.boxes

    @property
    def scores(self) -> np.ndarray:
        return self.detections.scores

    @property
    def digits(self) -> np.ndarray:
        """(n,) 0..9"""
        return self.detections.digits

    @property
    def digit_boxes(self) -> np.ndarray:
        """Boxes of the kept digits in reading order."""
        return self.boxes[self.order]
