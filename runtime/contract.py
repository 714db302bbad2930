"""The model's contract, written once: what every form of the model takes and returns, how its
labels map to digits, what a backend is, which forms an export has, when a form agrees with
PyTorch, what accuracy means, and which device runs it.

Torch-free, so the reader, the exporter's model card, the Triton config and its check, the
parity gate, training's evaluation and every benchmark import these and nothing restates them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from digit_reader.runtime.agreement import Parity
from digit_reader.runtime.decode import Detections
from digit_reader.runtime.errors import UserError

# ------------------------------------------------------------------------------ graph I/O

INPUT_NAME = "images"
OUTPUT_NAMES = ("num_dets", "boxes", "scores", "labels")


@dataclass(frozen=True)
class TensorSpec:
    """One graph tensor: its name, numpy dtype name and dims per image (the batch excluded)."""

    name: str
    dtype: str
    dims: tuple[int, ...]

    def card_entry(self) -> dict:
        """model.json's form: {name, dtype, shape} with the batch axis named first."""
        return {"name": self.name, "dtype": self.dtype, "shape": ["batch", *self.dims]}


def graph_io(canvas: tuple[int, int], k: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of every form of the model for a letterbox canvas (H, W) and K
    detections per image: the letterboxed uint8 canvas in; per image the number of detections,
    then K boxes (x1 y1 x2 y2, canvas pixels), scores and digit labels, sorted by score."""
    h, w = (int(v) for v in canvas)
    inputs = [TensorSpec(INPUT_NAME, "uint8", (3, h, w))]
    outputs = [
        TensorSpec("num_dets", "int32", ()),
        TensorSpec("boxes", "float32", (k, 4)),
        TensorSpec("scores", "float32", (k,)),
        TensorSpec("labels", "int32", (k,)),
    ]
    return inputs, outputs


def padded_outputs(detections: list[Detections], k: int) -> dict[str, np.ndarray]:
    """Detections (at most K each) as the graph returns them: sorted as given, padded after
    num_dets with zero boxes, score 0 and label -1."""
    n = len(detections)
    out = {
        "num_dets": np.zeros(n, np.int32),
        "boxes": np.zeros((n, k, 4), np.float32),
        "scores": np.zeros((n, k), np.float32),
        "labels": np.full((n, k), -1, np.int32),
    }
    for i, d in enumerate(detections):
        m = len(d.scores)
        out["num_dets"][i] = m
        out["boxes"][i, :m] = d.boxes
        out["scores"][i, :m] = d.scores
        out["labels"][i, :m] = d.digits
    return out


# --------------------------------------------------------------------------- digit labels

LABEL_OFFSET = 1  # the model's class 0 is the background


def category_of(digits):
    """Digit(s) 0-9 -> the model's class label, which is also the COCO / HW2 category_id."""
    return digits + LABEL_OFFSET


def digit_of(categories):
    """The model's class label(s) (COCO category_id) 1-10 -> digit(s) 0-9."""
    return categories - LABEL_OFFSET


# -------------------------------------------------------------------------------- backends


@runtime_checkable
class Backend(Protocol):
    """What runs one form of the model: ONNX Runtime, OpenVINO, TensorRT, a Triton server or
    the PyTorch reference. `name` says what runs (for humans), `max_batch` is the largest batch
    it takes (None: any)."""

    name: str
    max_batch: int | None

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 [N, 3, H, W] canvases -> the graph's outputs (OUTPUT_NAMES)."""

    def close(self) -> None:
        """Free what the backend holds (sessions, buffers, connections); idempotent."""


# ----------------------------------------------------------------------------------- forms

ENGINE_LABELS = {
    "pytorch": "PyTorch eager",
    "onnxruntime": "onnxruntime",
    "openvino": "OpenVINO",
    "tensorrt": "TensorRT",
}
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
CARD_NAME = "model.json"
# the export's files: (kind, precision) -> file name; bf16 runs the fp32 file (a runtime hint)
FILES = {
    ("onnx", "fp32"): "model.onnx",
    ("onnx", "fp16"): "model.fp16.onnx",
    ("onnx", "int8"): "model.int8.onnx",
    ("engine", "fp32"): "model.engine",
    ("engine", "fp16"): "model.fp16.engine",
    ("engine", "int8"): "model.int8.engine",
    ("ir", "fp32"): "model.xml",
    ("ir", "int8"): "model.int8.xml",
}
ENGINE_SUFFIXES = (".engine", ".plan")


def file_kind(name: str) -> str:
    """onnx, engine or ir, by a model file's suffix; UserError (2) for anything else."""
    if name.endswith(".onnx"):
        return "onnx"
    if name.endswith(ENGINE_SUFFIXES):
        return "engine"
    if name.endswith(".xml"):
        return "ir"
    raise UserError(f"{name}: unknown model type (want .onnx, .engine, .plan or .xml)", code=2)


def ir_weights(name: str) -> str:
    """The weights file beside an OpenVINO IR: model.xml -> model.bin."""
    return name.removesuffix(".xml") + ".bin"


@dataclass(frozen=True)
class Form:
    """One way to run the model: an engine, a precision and the export's file it reads (None
    for the eager PyTorch model). `label` is for display only; code compares the fields."""

    engine: str
    precision: str
    file: str | None = None

    @property
    def label(self) -> str:
        if self.engine == "pytorch":
            return ENGINE_LABELS["pytorch"]
        return f"{ENGINE_LABELS[self.engine]} {self.precision}"

    @classmethod
    def parse(cls, text: str) -> Form:
        """A form named on a command line, "onnxruntime int8" or "openvino bf16"."""
        by_label = {v.lower(): k for k, v in ENGINE_LABELS.items()}
        engine, _, precision = text.strip().lower().rpartition(" ")
        if engine not in by_label or precision not in PRECISIONS:
            raise UserError(f"{text!r}: not a form (ENGINE PRECISION, e.g. onnxruntime int8)", 2)
        return cls(by_label[engine], precision)

    def same_kind(self, other: Form) -> bool:
        """Same engine and precision, whichever file."""
        return (self.engine, self.precision) == (other.engine, other.precision)


EAGER = Form("pytorch", "fp32")
# the precisions each engine runs an export in, in table order
ENGINE_PRECISIONS = {
    "onnxruntime": ("fp32", "fp16", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
    "tensorrt": ("fp32", "fp16", "int8"),
}


def export_forms(files: dict[str, dict]) -> list[Form]:
    """Every form an export (model.json's `files`) was written and gated for, in table order:
    ONNX Runtime, OpenVINO, TensorRT; fp32, fp16, bf16, int8. OpenVINO's forms are its IR
    (`digit-export --openvino`), bf16 being the fp32 IR run with a bf16 hint; TensorRT's are
    listed for every ONNX graph, built or not."""
    forms = []
    for engine, precisions in ENGINE_PRECISIONS.items():
        for precision in precisions:
            base = "fp32" if precision == "bf16" else precision
            source = FILES[("ir" if engine == "openvino" else "onnx", base)]
            file = FILES[("engine", precision)] if engine == "tensorrt" else source
            if source in files:
                forms.append(Form(engine, precision, file))
    return forms


def openvino_file(files, precision: str) -> str | None:
    """The file OpenVINO runs for `precision`: the IR if the export has it, else the ONNX file."""
    base = "fp32" if precision == "bf16" else precision
    for kind in ("ir", "onnx"):
        name = FILES.get((kind, base))
        if name in files:
            return name
    return None


# ---------------------------------------------------------------------------- parity rules

BOX_TOL_PX = 0.5  # fp32: matched boxes within half a pixel
SCORE_TOL = 1e-3  # fp32: matched scores within this
FP16_MIN_AGREEMENT = 0.99  # fp16: share of images with the eager model's number
BF16_MIN_AGREEMENT = 0.99  # bf16 (OpenVINO on a CPU with bf16): the same
INT8_MIN_AGREEMENT = 0.98  # int8: share of images with the eager model's number ...
INT8_MAX_ACCURACY_DROP = 0.01  # ... and whole-number accuracy at most this far below eager's
_EPS = 1e-9  # accuracies are ratios of counts: compare them with a rounding margin
MIN_AGREEMENT = {"fp16": FP16_MIN_AGREEMENT, "bf16": BF16_MIN_AGREEMENT, "int8": INT8_MIN_AGREEMENT}


@dataclass(frozen=True)
class ParityRule:
    """When a form of `precision` agrees with the eager model: fp32 on every image (numbers,
    boxes within BOX_TOL_PX, scores within SCORE_TOL); fp16, bf16 and int8 on at least
    `min_agreement` of the numbers; int8 also within `max_accuracy_drop` of eager's accuracy
    (where the images have labels)."""

    precision: str
    min_agreement: float | None = None
    max_accuracy_drop: float | None = None

    def describe(self) -> str:
        if self.precision == "fp32":
            return (
                f"numbers identical on every image, boxes within {BOX_TOL_PX} px, scores "
                f"within {SCORE_TOL}"
            )
        text = f"numbers identical on at least {100 * self.min_agreement:.0f} % of images"
        if self.max_accuracy_drop is not None:
            text += f", accuracy at most {100 * self.max_accuracy_drop:g} point(s) below PyTorch's"
        return text


def parity_rule(
    precision: str, min_agreement: float | None = None, max_accuracy_drop: float | None = None
) -> ParityRule:
    """The rule for `precision`, with the defaults above unless given."""
    if precision == "fp32":
        return ParityRule("fp32")
    if precision not in MIN_AGREEMENT:
        raise ValueError(f"no parity rule for precision {precision!r}")
    floor = MIN_AGREEMENT[precision] if min_agreement is None else min_agreement
    drop = None
    if precision == "int8":
        drop = INT8_MAX_ACCURACY_DROP if max_accuracy_drop is None else max_accuracy_drop
    return ParityRule(precision, floor, drop)


@dataclass
class Verdict:
    """A form held to its rule: whether it passed, the images that broke the rule, and for
    int8 with labels whether its accuracy held (None: not checked)."""

    passed: bool
    agreeing: bool
    accurate: bool | None
    bad: list


def verdict(
    rule: ParityRule,
    parity: Parity,
    score_floor: float,
    accuracy: float | None = None,
    eager_accuracy: float | None = None,
) -> Verdict:
    """The one parity verdict (export gate and digit-bench parity). `score_floor` is the
    model's box score threshold: a detection lost near it is not a disagreement."""
    if rule.precision == "fp32":
        bad = parity.failures(BOX_TOL_PX, SCORE_TOL, score_floor)
        agreeing = not bad
    else:
        bad = [d for d in parity.diffs if not d.same_number]
        agreeing = parity.agreement >= rule.min_agreement
    accurate = None
    if rule.max_accuracy_drop is not None and accuracy is not None and eager_accuracy is not None:
        accurate = accuracy >= eager_accuracy - rule.max_accuracy_drop - _EPS
    return Verdict(agreeing and accurate is not False, agreeing, accurate, bad)


def whole_number_accuracy(numbers: list[str], truth: list[str]) -> float:
    """The report's metric: the share of images whose decoded number equals the label."""
    if not truth:
        return 0.0
    return sum(n == t for n, t in zip(numbers, truth, strict=True)) / len(truth)


# ---------------------------------------------------------------------------------- devices

DEFAULT_DEVICE = "auto"
DEVICE_HELP = "auto (CUDA where there is a GPU, else the CPU), cpu, cuda or cuda:N"


def check_device(device: str) -> str:
    """`device` if it is one of auto, cpu, cuda, cuda:N; else UserError (2)."""
    kind, _, index = device.partition(":")
    if device in ("auto", "cpu", "cuda") or (kind == "cuda" and index.isdigit()):
        return device
    raise UserError(f"--device must be {DEVICE_HELP}, got {device!r}", code=2)


def resolve_device(device: str, cuda_available: bool, what: str = "torch") -> str:
    """The device that runs: auto is cuda where `what` sees a GPU, else cpu; cuda[:N] where
    none is visible is a usage error, the same words everywhere."""
    device = check_device(device)
    if device == "auto":
        return "cuda" if cuda_available else "cpu"
    if device.startswith("cuda") and not cuda_available:
        raise UserError(
            f"--device {device}: no CUDA device is visible to {what}; use --device cpu", code=2
        )
    return device


def device_index(device: str) -> int:
    """The GPU ordinal of cuda[:N] (0 for plain cuda)."""
    _, _, index = device.partition(":")
    return int(index) if index else 0
