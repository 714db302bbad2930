"""The eager PyTorch model as the reference every exported form is compared with.

`detections_of` turns one torchvision output into runtime.decode.Detections (canvas pixels,
digits via runtime.contract): training's evaluation and `EagerBackend` both use it. The backend
puts the stock model (eval mode) behind runtime.contract's Backend protocol, so the export gate
and the benchmarks run it exactly like ONNX Runtime, OpenVINO or TensorRT.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from digit_reader.runtime.agreement import backend_detections
from digit_reader.runtime.contract import EAGER, digit_of, padded_outputs
from digit_reader.runtime.decode import Detections


def fp32_reference() -> None:
    """fp32 means fp32 on both sides of a parity check: no TF32 in the eager model's CUDA
    convolutions (on by default in torch) and matrix products. ORT's CUDA provider gets
    use_tf32=0 (runtime/ort_backend.py) and TensorRT engines are built without TF32."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def detections_of(out: dict) -> Detections:
    """One image's torchvision detection dict -> Detections in canvas pixels."""
    return Detections(
        boxes=out["boxes"].detach().float().cpu().numpy(),
        scores=out["scores"].detach().float().cpu().numpy(),
        digits=digit_of(out["labels"].detach().cpu().numpy().astype(np.int64)),
    )


class EagerBackend:
    """The stock torchvision model (eval mode) behind the Backend protocol: a uint8 NCHW batch
    in, the graph's padded outputs out. Runs the model as training evaluates it."""

    form = EAGER
    name = EAGER.label
    max_batch = None

    def __init__(self, model, max_detections: int, device="cpu"):
        self.model, self.k, self.device = model, max_detections, torch.device(device)

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(images).to(self.device).float().div_(255.0)
        results = self.model(list(x.unbind(0)))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return padded_outputs([detections_of(r) for r in results], self.k)

    def close(self) -> None:
        """Nothing to free: the model belongs to the caller."""


def eager_detections(
    model, canvases: np.ndarray, batch_size: int = 8, device="cpu"
) -> list[Detections]:
    """The eager model's detections (canvas pixels) on uint8 NCHW canvases."""
    k = model.roi_heads.detections_per_img
    return backend_detections(EagerBackend(model, k, device), canvases, batch_size)


@contextlib.contextmanager
def without_nms(model):
    """The model returning every candidate its box head scores above its threshold, before
    the final NMS and top-K: the evidence that two forms broke a score tie differently
    (runtime/agreement.py `prove_ties`)."""
    heads = model.roi_heads
    saved = heads.nms_thresh, heads.detections_per_img
    heads.nms_thresh, heads.detections_per_img = 1.0, 100_000
    try:
        yield model
    finally:
        heads.nms_thresh, heads.detections_per_img = saved


def candidates(model, canvases: np.ndarray, device="cpu") -> list[Detections]:
    """The eager model's candidates before NMS (canvas pixels) on uint8 NCHW canvases."""
    with without_nms(model):
        return eager_detections(model, canvases, device=device)
