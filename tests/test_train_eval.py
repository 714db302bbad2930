"""Validation metrics and submission files on hand-made detections (no model involved)."""

import csv
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from digit_reader.runtime.decode import Detections
from digit_reader.train.data.hw2 import Sample
from digit_reader.train.evaluate import (
    coco_ground_truth,
    coco_map,
    whole_number_accuracy,
)
from digit_reader.train.submission import write_submission


def _sample(image_id, boxes, digits, w=100, h=50):
    return Sample(
        image_id=image_id,
        path=Path(f"{image_id}.png"),
        width=w,
        height=h,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        digits=np.asarray(digits, np.int64),
    )


SAMPLES = [
    _sample(1, [[10, 5, 20, 35], [22, 5, 32, 35]], [4, 2]),  # "42"
    _sample(2, [[40, 10, 50, 40]], [7]),  # "7"
    _sample(3, [[5, 5, 15, 30], [16, 5, 26, 30], [27, 5, 37, 30]], [0, 0, 9]),  # "009"
]


def _exact(s: Sample, score: float = 0.9) -> Detections:
    return Detections(s.boxes.copy(), np.full(len(s.digits), score, np.float32), s.digits.copy())


def test_perfect_detections_score_one():
    dets = [_exact(s) for s in SAMPLES]
    assert whole_number_accuracy(dets, SAMPLES) == 1.0
    m = coco_map(dets, SAMPLES)
    assert m["map"] == pytest.approx(1.0) and m["map50"] == pytest.approx(1.0)


def test_accuracy_follows_the_decoding_rule():
    right_order_reversed_input = Detections(
        SAMPLES[0].boxes[::-1].copy(), np.array([0.9, 0.8], np.float32), np.array([2, 4])
    )
    low_score = Detections(SAMPLES[1].boxes, np.array([0.49], np.float32), np.array([7]))
    lost_leading_zero = Detections(
        SAMPLES[2].boxes, np.array([0.9, 0.3, 0.9], np.float32), SAMPLES[2].digits
    )
    dets = [right_order_reversed_input, low_score, lost_leading_zero]
    assert [d.number() for d in dets] == ["42", "-1", "09"]
    assert whole_number_accuracy(dets, SAMPLES) == pytest.approx(1 / 3)


def test_map_drops_for_a_wrong_class_and_a_loose_box():
    dets = [_exact(s) for s in SAMPLES]
    dets[1] = Detections(dets[1].boxes, dets[1].scores, np.array([1]))  # 7 read as 1
    loose = dets[0].boxes.copy()
    loose[0] += [0, 0, 6, 0]  # IoU 10/16 with its ground truth: counts at .5, not at .75
    dets[0] = Detections(loose, dets[0].scores, dets[0].digits)
    m = coco_map(dets, SAMPLES)
    assert 0.3 < m["map"] < 0.95 and m["map50"] < 1.0
    empty = [Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)) for _ in SAMPLES]
    assert coco_map(empty, SAMPLES) == {"map": 0.0, "map50": 0.0}
    assert whole_number_accuracy(empty, SAMPLES) == 0.0


def test_submission_files(tmp_path):
    dets = [_exact(s) for s in SAMPLES]
    dets[1] = Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    paths = write_submission(tmp_path, dets, SAMPLES)

    text = Path(paths["csv"]).read_text()
    assert text == "image_id,pred_label\n1,42\n2,-1\n3,009\n"
    rows = list(csv.DictReader(text.splitlines()))
    assert [r["pred_label"] for r in rows] == ["42", "-1", "009"]

    results = json.loads(Path(paths["json"]).read_text())
    assert len(results) == 5
    first = results[0]
    assert set(first) == {"image_id", "bbox", "score", "category_id"}
    assert first["bbox"] == [10.0, 5.0, 10.0, 30.0] and first["category_id"] == 5  # digit 4

    gt = COCO()
    gt.dataset = coco_ground_truth(SAMPLES)
    gt.createIndex()
    res = gt.loadRes(paths["json"])  # pycocotools accepts the file as written
    assert len(res.getAnnIds()) == 5

    with zipfile.ZipFile(paths["zip"]) as z:
        assert sorted(z.namelist()) == ["pred.csv", "pred.json"]
        assert z.read("pred.csv").decode() == text
