"""HW2 submission files exactly as graders read them: pred.csv (strings) and COCO pred.json."""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from digit_reader.runtime.contract import category_of

CSV_HEADER = ("image_id", "pred_label")


def natural_key(path: str | os.PathLike):
    """Sort key so that 2.png comes before 10.png."""
    name = Path(path).name
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", name)]


def image_id_for(path: str | os.PathLike) -> int | str:
    """HW2 test images are 1.png ... 13068.png with image_id = int(stem); others keep their stem."""
    stem = Path(path).stem
    return int(stem) if stem.isdigit() else stem


def csv_text(rows: Iterable[tuple[int | str, str]]) -> str:
    """`image_id,pred_label` with header; pred_label is a string (leading zeros kept, -1 = none)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for image_id, label in rows:
        writer.writerow((image_id, label))
    return buf.getvalue()


def coco_results(image_id: int | str, boxes_xyxy, scores, digits) -> list[dict]:
    """COCO detection results for one image: bbox [x, y, w, h], category_id of each digit."""
    out = []
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    scores, digits = np.reshape(scores, -1), np.reshape(digits, -1)
    for (x1, y1, x2, y2), s, d in zip(boxes, scores, digits, strict=True):
        out.append(
            {
                "image_id": image_id,
                "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                "score": round(float(s), 5),
                "category_id": category_of(int(d)),
            }
        )
    return out
