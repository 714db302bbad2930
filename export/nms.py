"""`digit_reader::nms_keep`: batched NMS with a static-shape result, and its ONNX translation.

torchvision's `nms` returns a data-dependent number of indices per image and per class, which
forces a Python loop over the batch (ONNX Loop, rejected by TensorRT). This op takes a batch of
independent NMS problems at once and returns a keep mask of the input's shape, so everything
around it stays static. In PyTorch it runs torchvision's `nms`; in ONNX it is one
NonMaxSuppression node (its data-dependent index list stays inside the graph) and a ScatterND
that turns the indices into the mask.
"""

from __future__ import annotations

import torch
import torchvision
from onnxscript import opset18 as op

# Scores at or below this never enter NMS: callers mark a candidate as removed by giving it
# the score -1, and every real score (sigmoid or softmax) is >= 0.
REMOVED = -1.0
SCORE_FLOOR = -0.5


@torch.library.custom_op("digit_reader::nms_keep", mutates_args=())
def nms_keep(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """boxes [B, M, 4] (x1 y1 x2 y2), scores [B, M] -> float mask [B, M], 1 where kept.

    Each of the B rows is its own NMS problem; candidates scored <= SCORE_FLOOR are ignored.
    """
    keep = torch.zeros_like(scores)
    for b in range(boxes.shape[0]):
        live = torch.where(scores[b] > SCORE_FLOOR)[0]
        kept = torchvision.ops.nms(boxes[b, live], scores[b, live], iou_threshold)
        keep[b, live[kept]] = 1.0
    return keep


@nms_keep.register_fake
def _(boxes, scores, iou_threshold):
    return torch.empty_like(scores)


def nms_keep_onnx(boxes, scores, iou_threshold: float):
    """ONNX: NonMaxSuppression over B batches of one class each, scattered into a 0/1 mask."""
    max_per_class = op.Shape(scores, start=1, end=2)
    selected = op.NonMaxSuppression(
        boxes,
        op.Unsqueeze(scores, op.Constant(value_ints=[1])),
        max_per_class,
        op.Constant(value_floats=[iou_threshold]),
        op.Constant(value_floats=[SCORE_FLOOR]),
    )  # [S, 3] = (batch, class, box)
    where = op.Gather(selected, op.Constant(value_ints=[0, 2]), axis=1)
    ones = op.Expand(op.Constant(value_floats=[1.0]), op.Shape(selected, start=0, end=1))
    zeros = op.Expand(op.Constant(value_floats=[0.0]), op.Shape(scores))
    return op.ScatterND(zeros, where, ones)


ONNX_TRANSLATIONS = {torch.ops.digit_reader.nms_keep.default: nms_keep_onnx}
