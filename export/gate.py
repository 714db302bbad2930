"""The export's parity gate: every form it writes must read the gate's images as the eager model
does, by runtime.contract's rule for its precision, or the export fails and writes nothing.

`Gate` holds the images (canvases, the preprocessing contract applied), the eager model's
detections on them and the labels; `check` runs one Backend on them and holds the result to
the rule. A failure names the failing images and draws each of them, eager beside the form,
outside the output directory.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digit_reader.runtime.agreement import (
    Parity,
    backend_detections,
    describe,
    measure,
    prove_ties,
)
from digit_reader.runtime.console import err
from digit_reader.runtime.contract import (
    BOX_TOL_PX,
    SCORE_TOL,
    Form,
    ParityRule,
    verdict,
    whole_number_accuracy,
)
from digit_reader.runtime.decode import DEFAULT_THRESHOLD, Detections
from digit_reader.runtime.draw import write_comparisons
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.preprocess import boxes_from_canvas

# an int8 form calibrated with max that fails: the demo's model read 97.5 % with max's ranges in
# OpenVINO, 99.0 % with the 99.99th percentile's (export/defaults.py)
INT8_HINT = (
    "\nranges from --calib-method max: --calib-method percentile is less stretched by outlier "
    "activations (slower to calibrate on large canvases)"
)


class ExportFailed(UserError):
    """The graph broke a TensorRT rule or the parity gate; nothing was written."""


@dataclass
class Checked:
    """A form's agreement with the eager model on the gate's images, and for int8 its accuracy
    next to the eager model's (None without labels)."""

    parity: Parity
    accuracy: float | None = None
    eager_accuracy: float | None = None

    def figures(self) -> dict:
        out = {"agreement": self.parity.agreement, "images": len(self.parity.diffs)}
        if self.accuracy is not None:
            out |= {"accuracy": self.accuracy, "eager_accuracy": self.eager_accuracy}
        return out

    def summary(self) -> str:
        text = self.parity.summary()
        if self.accuracy is not None:
            text += f"; accuracy {self.accuracy:.3f} (eager {self.eager_accuracy:.3f})"
        return text


def enforce(
    label: str,
    rule: ParityRule,
    result: Parity,
    score_floor: float,
    accuracy: tuple[float, float] | None = None,
) -> list:
    """Raise ExportFailed naming the failing images unless `result` meets `rule`; returns the
    images that broke it (none when passed). `accuracy`: (the form's, the eager model's)."""
    err(f"parity {label}: {result.summary()}")
    got, eager = accuracy or (None, None)
    v = verdict(rule, result, score_floor, got, eager)
    if v.passed:
        return v.bad
    lines = "\n".join("  " + describe(d) for d in v.bad[:20])
    if rule.precision == "fp32":
        raise ExportFailed(
            f"{label} disagrees with the eager model on {len(v.bad)} of "
            f"{len(result.diffs)} images (rule: same numbers, boxes within {BOX_TOL_PX} px, "
            f"scores within {SCORE_TOL}):\n{lines}"
        )
    option = f"--{rule.precision}-min-agreement"
    head = f"{label} reads {100 * result.agreement:.1f} % of the numbers as the eager model does"
    if not v.agreeing:
        head += f", below {100 * rule.min_agreement:g} % ({option})"
    if v.accurate is False:
        head += (
            f"{',' if v.agreeing else ';'} its accuracy {got:.3f} is more than "
            f"{100 * rule.max_accuracy_drop:g} point(s) below the eager model's {eager:.3f} "
            "(--int8-max-accuracy-drop)"
        )
    raise ExportFailed(f"{head}:\n{lines}")


@dataclass
class Gate:
    """The parity gate's images, the eager model's detections on them, and the rule's settings
    (`opts`: ExportOptions, whose `rule` and `gate_images` give each precision's)."""

    names: list[str]
    canvases: np.ndarray  # uint8 [N, 3, H, W], the preprocessing contract applied
    ref: list  # the eager model's detections on them
    score_floor: float
    opts: object
    truth: list[str] | None = None  # the labelled numbers, when the images have labels
    scales: list[float] = field(default_factory=list)  # canvas -> image pixels, per image
    sizes: list[tuple[int, int]] = field(default_factory=list)
    # the eager model's candidates before NMS for some of the images (indices), which prove
    # a tie broken the other way (runtime/agreement.py); None: no tie is excused
    candidates: Callable[[list[int]], list[Detections]] | None = None

    def check(self, form: Form, backend, variant: str = "") -> Checked:
        """Run `backend` (which runs `form`; `variant` names how, for the messages) on the
        canvases; raise ExportFailed unless it passes its precision's rule, after drawing each
        failing image outside the output directory (a failed export writes nothing there)."""
        label = f"{form.label} ({variant})" if variant else form.label
        n = self.opts.gate_images(form.precision)
        got = backend_detections(backend, self.canvases[:n])
        result = measure(self.ref[:n], got, self.names[:n])
        rule = self.opts.rule(form.precision)
        if rule.precision == "fp32" and self.candidates is not None:
            result = prove_ties(result, self.ref, got, self.candidates, BOX_TOL_PX, SCORE_TOL)
        checked = Checked(result)
        if rule.max_accuracy_drop is not None and self.truth is not None:
            checked.accuracy = self.accuracy(got)
            checked.eager_accuracy = self.accuracy(self.ref[:n])
        elif rule.max_accuracy_drop is not None:
            err(f"parity {label}: the images have no labels; accuracy not checked")
        scores = None if checked.accuracy is None else (checked.accuracy, checked.eager_accuracy)
        try:
            enforce(label, rule, result, self.score_floor, scores)
        except ExportFailed as e:
            bad = verdict(rule, result, self.score_floor, *(scores or (None, None))).bad
            where = self.pictures(label, {d.name for d in bad}, got)
            hint = INT8_HINT if form.precision == "int8" and self.opts.calib_method == "max" else ""
            pictures = f"pictures (eager left, {label} right): {where}"
            raise ExportFailed(f"{e}\n{pictures}{hint}") from None
        return checked

    def accuracy(self, dets: list[Detections]) -> float:
        """Whole-number accuracy as the reader decodes: boxes back in image pixels."""
        numbers = [
            Detections(boxes_from_canvas(d.boxes, scale, size), d.scores, d.digits).number()
            for d, scale, size in zip(dets, self.scales, self.sizes, strict=False)
        ]
        return whole_number_accuracy(numbers, self.truth[: len(numbers)])

    def pictures(self, label: str, failing: set[str], got: list) -> Path:
        where = Path(tempfile.mkdtemp(prefix="digit-export-parity-"))
        items = [
            (n, self.canvases[i].transpose(1, 2, 0), self.ref[i], got[i])
            for i, n in enumerate(self.names[: len(got)])
            if n in failing
        ]
        write_comparisons(where, items, ("PyTorch eager", label), DEFAULT_THRESHOLD)
        return where
