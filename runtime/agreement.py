"""Image-by-image agreement between two forms of the model (the eager PyTorch model and an
exported graph, usually), both given as runtime.decode.Detections in the same pixels.

Per image: the whole-number string (runtime.decode, the reader's rule), and every detection
matched to its counterpart (same digit, IoU >= 0.5, greedy by score) for box and score
deviation. The rule a form is held to is runtime.contract's `verdict`; the export gate and
`digit-bench parity` both measure with this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from digit_reader.runtime.decode import DEFAULT_THRESHOLD, Detections, split_outputs

MATCH_IOU = 0.5
MATCH_EMPTY_PX = 0.5  # empty boxes: the same place within this many pixels
# Two candidates of one digit whose scores differ by a float32 rounding (near 1.0 a step is
# 6e-8) are a tie that NMS may break either way; forms whose arithmetic differs in the last bit
# (another CPU's kernels, another library) then keep different, equally scored boxes. Seen on
# the demo's model: two RoIs of one digit at 0.99995983 and 0.99995971 in PyTorch, 0.74 px
# apart, the other kept by ONNX Runtime on an AVX2 CPU. Such a pair is a tie only when the
# reference proves it: its own candidates before NMS (`alternatives`) hold the other form's box
# (within TIE_BOX_PX) at a score within TIE_SCORE of the box it kept. Its deviation is then
# reported but is no fp32 disagreement; without that evidence every pair is held to the rule.
TIE_SCORE = 1e-6
TIE_BOX_PX = 0.5  # the fp32 rule's box tolerance (runtime.contract.BOX_TOL_PX)


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
    tied: list[bool] = field(default_factory=list)  # per matched pair: scores within TIE_SCORE

    @property
    def same_number(self) -> bool:
        return self.ref_number == self.number

    @property
    def box_dev(self) -> float:
        return max(self.box_devs, default=0.0)

    def untied_box_dev(self) -> float:
        """The largest box deviation of a pair that is not a proven tie (see TIE_SCORE)."""
        tied = self.tied or [False] * len(self.box_devs)
        devs = [dev for dev, tie in zip(self.box_devs, tied, strict=True) if not tie]
        return max(devs, default=0.0)


def _is_tie(score: float, box: np.ndarray, digit: int, alternatives: Detections) -> bool:
    """Whether the reference had `box` of `digit` among its candidates, at `score` (a tie)."""
    same = (alternatives.digits == digit) & (np.abs(alternatives.scores - score) <= TIE_SCORE)
    near = np.abs(alternatives.boxes - box).max(axis=1) <= TIE_BOX_PX
    return bool(np.any(same & near))


def compare(
    ref: Detections,
    other: Detections,
    name: str = "",
    threshold: float = DEFAULT_THRESHOLD,
    alternatives: Detections | None = None,
):
    """Match `other`'s detections to `ref`'s (same digit, IoU >= 0.5, greedy by ref score);
    `alternatives`, the reference's candidates before NMS, prove ties (see TIE_SCORE)."""
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
        score_dev = float(abs(ref.scores[i] - other.scores[j]))
        tie = alternatives is not None and _is_tie(
            float(ref.scores[i]), other.boxes[j], int(other.digits[j]), alternatives
        )
        diff.tied.append(tie)
        diff.score_dev = max(diff.score_dev, score_dev)
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
        """Images that break the fp32 rule: another number, a box (other than a score tie's) or
        a score off by more than the tolerance, or a detection missing on one side that is not
        just at the score cut-off."""

        def bad(d: ImageDiff) -> bool:
            lost = [s for s in d.unmatched_ref + d.unmatched_other if s > score_floor + score_tol]
            off = d.untied_box_dev() > box_tol or d.score_dev > score_tol
            return not d.same_number or off or bool(lost)

        return [d for d in self.diffs if bad(d)]

    def ties(self, box_tol: float) -> list[str]:
        """Images whose only box off by more than `box_tol` is a proven score tie."""
        return [d.name for d in self.diffs if d.box_dev > box_tol and d.untied_box_dev() <= box_tol]

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


def box_only(d: ImageDiff, box_tol: float, score_tol: float) -> bool:
    """An image whose only fault is a box off by more than `box_tol`: maybe a tie."""
    return d.same_number and d.box_dev > box_tol and d.score_dev <= score_tol


def prove_ties(parity: Parity, ref, other, candidates, box_tol: float, score_tol: float) -> Parity:
    """`parity` with the box-only faults compared again against the reference's candidates
    before NMS (`candidates(indices)` -> their Detections), so proven ties are marked."""
    suspects = [i for i, d in enumerate(parity.diffs) if box_only(d, box_tol, score_tol)]
    if not suspects:
        return parity
    diffs = list(parity.diffs)
    for i, alt in zip(suspects, candidates(suspects), strict=True):
        diffs[i] = compare(ref[i], other[i], diffs[i].name, alternatives=alt)
    return Parity(diffs)


def backend_detections(backend, canvases: np.ndarray, batch_size: int = 8) -> list[Detections]:
    """Any Backend over uint8 [N, 3, H, W] canvases, in batches: the detections to compare
    (canvas pixels)."""
    out = []
    for start in range(0, len(canvases), batch_size):
        batch = np.ascontiguousarray(canvases[start : start + batch_size])
        out += split_outputs(backend(batch))
    return out
