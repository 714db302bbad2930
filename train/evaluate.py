"""Predictions of the eager model in original-image pixels, and the report's validation metrics.

Whole-number accuracy is runtime.contract's, over numbers decoded by runtime.decode (score >=
0.5, left to right, ties by top edge, "-1" when nothing is kept): the same rule as the reader's
and the export parity gate's.
mAP@[.5:.95] is pycocotools' over all detections the model returns, in original-image pixels.
"""

from __future__ import annotations

import contextlib
import io
import sys

import torch

from digit_reader.runtime import contract
from digit_reader.runtime.decode import DEFAULT_THRESHOLD, Detections
from digit_reader.runtime.preprocess import boxes_from_canvas
from digit_reader.runtime.submission import coco_results
from digit_reader.train import distributed
from digit_reader.train.data.hw2 import CocoWriter, Sample
from digit_reader.train.eager import detections_of


def from_model_output(out: dict, scale: float, size_wh: tuple[int, int]) -> Detections:
    """One torchvision output -> Detections in original-image pixels."""
    d = detections_of(out)
    return Detections(boxes_from_canvas(d.boxes, scale, size_wh), d.scores, d.digits)


@torch.no_grad()
def predict(
    model,
    samples: list[Sample],
    canvas: tuple[int, int],
    tcfg,
    device,
    info: distributed.DistInfo | None = None,
    progress: bool = False,
    sharpen: bool = False,
) -> list[Detections]:
    """Detections for every sample, in order; under torchrun each rank runs a shard.
    `sharpen`: the model's (ModelConfig.sharpen)."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from digit_reader.train.dataset import DigitDataset, collate, loader_options, to_model_input

    info = info or distributed.DistInfo()
    dataset = DigitDataset(samples, canvas, tcfg, train=False, sharpen=sharpen)
    shard = list(range(info.rank, len(samples), info.world))
    batches = [
        shard[i : i + tcfg.eval_batch_size] for i in range(0, len(shard), tcfg.eval_batch_size)
    ]
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=collate,
        generator=torch.Generator(),
        **loader_options(tcfg.workers, device),
    )
    was_training = model.training
    model.eval()
    mine: dict[int, Detections] = {}
    bar = tqdm(
        loader, desc="eval", leave=False, disable=None if progress else True, file=sys.stderr
    )
    for images, _, metas in bar:
        # fp32, even for a model trained with AMP: fp16 box decoding at canvas coordinates up
        # to 1344 moves in 1-px steps, and what is deployed (and gated) is the fp32 graph
        outputs = model(to_model_input(images, device))
        for out, meta in zip(outputs, metas, strict=True):
            mine[meta["index"]] = from_model_output(out, meta["scale"], meta["size"])
    model.train(was_training)
    merged: dict[int, Detections] = {}
    for part in distributed.gather(mine, info):
        merged.update(part)
    return [merged[i] for i in range(len(samples))]


def whole_number_accuracy(
    dets: list[Detections], samples: list[Sample], threshold: float = DEFAULT_THRESHOLD
) -> float:
    numbers = [d.number(threshold) for d in dets]
    return contract.whole_number_accuracy(numbers, [s.number for s in samples])


def coco_ground_truth(samples: list[Sample]) -> dict:
    """The samples' labels as the COCO object pycocotools scores against (the HW2 json)."""
    coco = CocoWriter()
    for s in samples:
        xywh = [(x1, y1, x2 - x1, y2 - y1) for x1, y1, x2, y2 in s.boxes.tolist()]
        coco.add(s.image_id, s.path.name, s.width, s.height, xywh, s.digits.tolist())
    return coco.to_dict()


def coco_map(dets: list[Detections], samples: list[Sample]) -> dict[str, float]:
    """{map (@[.5:.95]), map50} from pycocotools; 0 when there is no detection at all."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = []
    for d, s in zip(dets, samples, strict=True):
        results += coco_results(s.image_id, d.boxes, d.scores, d.digits)
    if not results or not samples:
        return {"map": 0.0, "map50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints; stdout is data only
        gt = COCO()
        gt.dataset = coco_ground_truth(samples)
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map": max(float(ev.stats[0]), 0.0), "map50": max(float(ev.stats[1]), 0.0)}


def metrics(dets: list[Detections], samples: list[Sample]) -> dict[str, float]:
    return {"accuracy": whole_number_accuracy(dets, samples), **coco_map(dets, samples)}
