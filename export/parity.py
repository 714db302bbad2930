"""Image-by-image agreement between the eager PyTorch model and an exported graph.

Both sides get the same letterboxed canvases (runtime.preprocess) and are compared in canvas
pixels: the whole-number string (runtime.decode, the reader's rule), and every detection
matched to its counterpart (same digit, IoU >= 0.5, greedy by score) for box and score
deviation. The export gate and `digit-bench parity` both use this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from digit_reader.export.defaults import (
    BOX_TOL_PX,
    FP16_MIN_AGREEMENT,
    INT8_MIN_AGREEMENT,
    SCORE_TOL,
)
from digit_reader.runtime.decode import DEFAULT_THRESHOLD, Detections, split_outputs

MATCH_IOU = 0.5
MATCH_EMPTY_PX = 0.5  # empty boxes: the same place within this many pixels
MIN_AGREEMENT = {"fp16": FP16_MIN_AGREEMENT, "int8": INT8_MIN_AGREEMENT}  # fp32: every image


def fp32_reference() -> None:
    """fp32 means fp32 on both sides of a parity check: no TF32 in the eager model's CUDA
    convolutions (on by default in torch) and matrix products. ORT's CUDA provider gets
    use_tf32=0 (runtime/ort_backend.py) and TensorRT engines are built without TF32."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


class EagerBackend:
    """The stock torchvision model (eval mode) behind the runtime backends' interface: a uint8
    NCHW batch in, the graph's padded outputs out. Runs the model as training evaluates it."""

    name = "PyTorch eager"
    max_batch = None

    def __init__(self, model, max_detections: int, device="cpu"):
        self.model, self.k, self.device = model, max_detections, torch.device(device)

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(images).to(self.device).float().div_(255.0)
        results = self.model(list(x.unbind(0)))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        n = len(results)
        out = {
            "num_dets": np.zeros(n, np.int32),
            "boxes": np.zeros((n, self.k, 4), np.float32),
            "scores": np.zeros((n, self.k), np.float32),
            "labels": np.full((n, self.k), -1, np.int32),
        }
        for i, r in enumerate(results):
            m = len(r["scores"])
            out["num_dets"][i] = m
            out["boxes"][i, :m] = r["boxes"].float().cpu().numpy()
            out["scores"][i, :m] = r["scores"].float().cpu().numpy()
            out["labels"][i, :m] = r["labels"].cpu().numpy() - 1
        return out


def eager_detections(
    model, canvases: np.ndarray, batch_size: int = 8, device="cpu"
) -> list[Detections]:
    """The eager model's detections (canvas pixels) on uint8 NCHW canvases."""
    k = model.roi_heads.detections_per_img
    return backend_detections(EagerBackend(model, k, device), canvases, batch_size)


def backend_detections(backend, canvases: np.ndarray, batch_size: int = 8) -> list[Detections]:
    """Any runtime backend (callable on a uint8 NCHW batch) over the canvases, in batches."""
    out = []
    for start in range(0, len(canvases), batch_size):
        batch = np.ascontiguousarray(canvases[start : start + batch_size])
        out += split_outputs(backend(batch))
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU; two empty boxes (clipped to the image's edge) match when they nearly coincide."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    union = area_a[:, None] + area_b[None, :] - inter
    close = np.abs(a[:, None, :] - b[None, :, :]).max(axis=2, initial=0.0) <= MATCH_EMPTY_PX
    empty = np.where(close, 1.0, 0.0)
    return np.where(union > 0, inter / np.where(union > 0, union, 1), empty)


@dataclass
class ImageDiff:
    name: str
    ref_number: str
    number: str
    matched: int
    unmatched_ref: list[float] = field(default_factory=list)  # scores of unmatched detections
    unmatched_other: list[float] = field(default_factory=list)
    box_devs: list[float] = field(default_factory=list)  # per matched pair, max |coordinate|
    score_dev: float = 0.0

    @property
    def same_number(self) -> bool:
        return self.ref_number == self.number

    @property
    def box_dev(self) -> float:
        return max(self.box_devs, default=0.0)


def compare(
    ref: Detections, other: Detections, name: str = "", threshold: float = DEFAULT_THRESHOLD
):
    """Match `other`'s detections to `ref`'s (same digit, IoU >= 0.5, greedy by ref score)."""
    diff = ImageDiff(name, ref.number(threshold), other.number(threshold), 0)
    iou = _iou(ref.boxes.astype(np.float64), other.boxes.astype(np.float64))
    iou = np.where(ref.digits[:, None] == other.digits[None, :], iou, -1.0)
    taken = np.zeros(len(other.scores), dtype=bool)
    for i in np.argsort(-ref.scores, kind="stable"):
        cand = np.where(taken, -1.0, iou[i]) if len(taken) else np.zeros(0)
        j = int(np.argmax(cand)) if len(cand) else -1
        if j < 0 or cand[j] < MATCH_IOU:
            diff.unmatched_ref.append(float(ref.scores[i]))
            continue
        taken[j] = True
        diff.matched += 1
        diff.box_devs.append(float(np.abs(ref.boxes[i] - other.boxes[j]).max()))
        diff.score_dev = max(diff.score_dev, float(abs(ref.scores[i] - other.scores[j])))
    diff.unmatched_other = [float(s) for s in other.scores[~taken]]
    return diff


@dataclass
class Parity:
    """Agreement of one exported form with the eager model over a set of images."""

    diffs: list[ImageDiff]

    @property
    def agreement(self) -> float:
        return sum(d.same_number for d in self.diffs) / max(len(self.diffs), 1)

    @property
    def max_box_dev(self) -> float:
        return max((d.box_dev for d in self.diffs), default=0.0)

    @property
    def mean_box_dev(self) -> float:
        devs = [v for d in self.diffs for v in d.box_devs]
        return float(np.mean(devs)) if devs else 0.0

    @property
    def max_score_dev(self) -> float:
        return max((d.score_dev for d in self.diffs), default=0.0)

    def failures(self, box_tol: float, score_tol: float, score_floor: float) -> list[ImageDiff]:
        """Images that break the fp32 rule: another number, a box or score off by more than the
        tolerance, or a detection missing on one side that is not just at the score cut-off."""

        def bad(d: ImageDiff) -> bool:
            lost = [s for s in d.unmatched_ref + d.unmatched_other if s > score_floor + score_tol]
            return not d.same_number or d.box_dev > box_tol or d.score_dev > score_tol or bool(lost)

        return [d for d in self.diffs if bad(d)]

    def verdict(
        self, precision: str, score_floor: float, min_agreement: float | None = None
    ) -> tuple[bool, list[ImageDiff]]:
        """(passed, the offending images): fp32 must agree on every image (numbers, boxes within
        BOX_TOL_PX, scores within SCORE_TOL); fp16 and int8 on at least `min_agreement` of the
        numbers (default MIN_AGREEMENT's). int8's accuracy rule needs labels: the caller's."""
        if precision == "fp32":
            bad = self.failures(BOX_TOL_PX, SCORE_TOL, score_floor)
            return not bad, bad
        bad = [d for d in self.diffs if not d.same_number]
        floor = MIN_AGREEMENT[precision] if min_agreement is None else min_agreement
        return self.agreement >= floor, bad

    def summary(self) -> str:
        n = len(self.diffs)
        same = sum(d.same_number for d in self.diffs)
        return (
            f"{same}/{n} numbers identical ({100 * self.agreement:.1f} %), boxes max "
            f"{self.max_box_dev:.2g} px mean {self.mean_box_dev:.2g} px, scores max "
            f"{self.max_score_dev:.2g}"
        )


def _short(number: str, width: int = 24) -> str:
    return repr(number if len(number) <= width else number[: width - 1] + "…")


def describe(d: ImageDiff) -> str:
    """One line for a per-image report."""
    parts = [f"{d.name}: eager {_short(d.ref_number)}, exported {_short(d.number)}"]
    if d.box_devs:
        parts.append(f"box dev {d.box_dev:.3g} px, score dev {d.score_dev:.3g}")
    for side, scores in (("eager", d.unmatched_ref), ("exported", d.unmatched_other)):
        if scores:
            parts.append(
                f"{len(scores)} {side} detection(s) unmatched (top score {max(scores):.3f})"
            )
    return "; ".join(parts)


def measure(ref: list[Detections], other: list[Detections], names: list[str]) -> Parity:
    return Parity([compare(r, o, n) for r, o, n in zip(ref, other, names, strict=True)])
