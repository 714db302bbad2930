"""The HW2 data layout, the one format every part of the project reads and writes.

root/{train,valid,test}/N.png and root/{split}.json in COCO form: bbox = [x_min, y_min, w, h]
in pixels, category_id 1..10 = digit 0..9, image_id = int(stem) of the file name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digit_reader.runtime import atomic
from digit_reader.runtime.decode import decode_number
from digit_reader.runtime.errors import UserError

SPLITS = ("train", "valid", "test")
CATEGORIES = [{"id": d + 1, "name": str(d)} for d in range(10)]


class DataError(UserError):
    """A malformed data set: the message names the file and the entry."""


@dataclass
class Sample:
    image_id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # (k, 4) float32 x1 y1 x2 y2, image pixels
    digits: np.ndarray  # (k,) int64, 0..9

    @property
    def number(self) -> str:
        """Ground-truth whole number, by the same rule the model's output is decoded with."""
        return decode_number(self.boxes, np.ones(len(self.digits)), self.digits, threshold=0.0)


@dataclass
class LoadReport:
    """What load_split had to fix or skip; printed as warnings with counts, never silently."""

    clipped_boxes: int = 0
    dropped_boxes: int = 0
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str, limit: int = 20) -> None:
        if len(self.warnings) < limit:
            self.warnings.append(message)

    def lines(self) -> list[str]:
        """Warnings (the first 20) and the totals, ready for stderr."""
        if not (self.clipped_boxes or self.dropped_boxes):
            return []
        return [f"warning: {w}" for w in self.warnings] + [
            f"warning: {self.clipped_boxes} box(es) clipped to their image, "
            f"{self.dropped_boxes} dropped for having no area inside it"
        ]


def _read_json(path: Path):
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None


def load_split(
    root, split: str, report: LoadReport | None = None, verify_images: bool = False
) -> list[Sample]:
    """Read root/{split}.json; for test without json (as HW2's) list root/test/*.png unlabelled.

    Boxes partly outside the image are clipped, boxes with no area left (or a negative size)
    are dropped, both counted in `report`; a missing image, unknown category or malformed
    entry is a DataError naming the json and the entry. `verify_images` decodes every image
    (as training will) and checks its size against the json.
    """
    root = Path(root)
    report = report if report is not None else LoadReport()
    json_path = root / f"{split}.json"
    image_dir = root / split
    if not json_path.exists():
        if not image_dir.is_dir():
            raise DataError(f"{root}: neither {split}.json nor {split}/ exists")
        if split != "test":
            raise DataError(
                f"{json_path}: no such file ({split}/ needs its labels; only test may go without)"
            )
        return _unlabelled(image_dir, verify_images)
    coco = _read_json(json_path)
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise DataError(f"{json_path}: expected a COCO object with an 'images' list")
    anns = coco.get("annotations", [])
    if not isinstance(anns, list):
        raise DataError(f"{json_path}: 'annotations' must be a list")
    _check_categories(json_path, coco.get("categories"))
    images: dict[int, dict] = {}
    for i, im in enumerate(coco["images"]):
        try:
            image_id, file_name = _int(im["id"]), im["file_name"]
            width, height = _int(im["width"]), _int(im["height"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{json_path}: images[{i}] is malformed ({e!r})") from None
        where = f"{json_path}: images[{i}] (id {image_id})"
        if image_id in images:
            raise DataError(f"{json_path}: images[{i}] repeats image id {image_id}")
        if not isinstance(file_name, str) or Path(file_name).name != file_name or not file_name:
            raise DataError(f"{where} file_name {file_name!r} is not a plain file name")
        if width < 1 or height < 1:
            raise DataError(f"{where} has size {width}x{height}; expected positive width, height")
        path = image_dir / file_name
        if not path.is_file():
            raise DataError(f"{where} points at missing {path}")
        if verify_images:
            _verify(where, path, (width, height))
        images[image_id] = {"path": path, "w": width, "h": height, "boxes": [], "digits": []}
    for i, ann in enumerate(anns):
        try:
            image_id = _int(ann["image_id"])
            bbox = ann["bbox"]
            if not isinstance(bbox, list) or len(bbox) != 4:
                raise ValueError(f"bbox {bbox!r} is not [x, y, w, h]")
            x, y, w, h = (_float(v) for v in bbox)
            cat = _int(ann["category_id"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{json_path}: annotations[{i}] is malformed ({e!r})") from None
        if image_id not in images:
            raise DataError(f"{json_path}: annotations[{i}] refers to unknown image id {image_id}")
        if not 1 <= cat <= 10:
            raise DataError(
                f"{json_path}: annotations[{i}] has category_id {cat}; expected 1..10 (digit + 1)"
            )
        im = images[image_id]
        x1, y1, x2, y2 = x, y, x + w, y + h
        cx1, cy1 = min(max(x1, 0.0), im["w"]), min(max(y1, 0.0), im["h"])
        cx2, cy2 = min(max(x2, 0.0), im["w"]), min(max(y2, 0.0), im["h"])
        if w <= 0 or h <= 0 or cx2 - cx1 < 1.0 or cy2 - cy1 < 1.0:
            report.dropped_boxes += 1
            report.warn(
                f"{json_path}: annotations[{i}] (image {image_id}) box {[x, y, w, h]} has no area "
                f"inside the {im['w']}x{im['h']} image; dropped"
            )
            continue
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
            report.clipped_boxes += 1
            report.warn(
                f"{json_path}: annotations[{i}] (image {image_id}) box {[x, y, w, h]} reaches "
                f"outside the {im['w']}x{im['h']} image; clipped"
            )
        im["boxes"].append((cx1, cy1, cx2, cy2))
        im["digits"].append(cat - 1)
    return [
        Sample(
            image_id=image_id,
            path=im["path"],
            width=im["w"],
            height=im["h"],
            boxes=np.asarray(im["boxes"], dtype=np.float32).reshape(-1, 4),
            digits=np.asarray(im["digits"], dtype=np.int64),
        )
        for image_id, im in sorted(images.items())
    ]


def _int(value) -> int:
    """JSON integers only: 3 and 3.0 pass, 3.5, "3", true and null do not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"{value!r} is not an integer")
    return int(value)


def _float(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    return float(value)


def _check_categories(json_path: Path, categories) -> None:
    """A json whose categories name digits some other way (SVHN's 10 = "0") would be misread."""
    if categories is None:
        return
    if not isinstance(categories, list):
        raise DataError(f"{json_path}: 'categories' must be a list")
    for i, cat in enumerate(categories):
        name = cat.get("name") if isinstance(cat, dict) else None
        cid = cat.get("id") if isinstance(cat, dict) else None
        if isinstance(name, str) and name.isdigit() and len(name) == 1 and cid != int(name) + 1:
            raise DataError(
                f"{json_path}: categories[{i}] maps id {cid!r} to {name!r}; HW2 uses "
                f"category_id = digit + 1 (id {int(name) + 1} for {name!r})"
            )


def _verify(where: str, path: Path, size_wh: tuple[int, int] | None):
    from digit_reader.runtime.errors import ImageError
    from digit_reader.runtime.preprocess import open_rgb

    try:
        rgb = open_rgb(path)
    except ImageError as e:
        raise DataError(f"{where}: {e}") from None
    actual = (rgb.shape[1], rgb.shape[0])
    if size_wh is not None and actual != size_wh:
        raise DataError(
            f"{where}: {path} is {actual[0]}x{actual[1]}, the json says {size_wh[0]}x{size_wh[1]}"
        )
    return actual


def _unlabelled(image_dir: Path, verify_images: bool = False) -> list[Sample]:
    from digit_reader.runtime.preprocess import is_image_path
    from digit_reader.runtime.submission import image_id_for, natural_key

    out = []
    for path in sorted((p for p in image_dir.iterdir() if is_image_path(p)), key=natural_key):
        image_id = image_id_for(path)
        if not isinstance(image_id, int):
            raise DataError(f"{path}: HW2 test images are named N.png with a numeric N")
        w, h = _verify(str(path), path, None) if verify_images else (0, 0)
        empty = np.zeros((0, 4), np.float32)
        out.append(Sample(image_id, path, w, h, empty, np.zeros(0, np.int64)))
    return out


class CocoWriter:
    """Collects images and boxes of one split; `save` writes {split}.json atomically."""

    def __init__(self):
        self.images: list[dict] = []
        self.annotations: list[dict] = []

    def add(self, image_id: int, file_name: str, width: int, height: int, boxes_xywh, digits):
        self.images.append(
            {
                "id": int(image_id),
                "file_name": file_name,
                "width": int(width),
                "height": int(height),
            }
        )
        for (x, y, w, h), d in zip(boxes_xywh, digits, strict=True):
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1,
                    "image_id": int(image_id),
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "category_id": int(d) + 1,
                    "area": float(w) * float(h),
                    "iscrowd": 0,
                }
            )

    def to_dict(self) -> dict:
        return {"images": self.images, "annotations": self.annotations, "categories": CATEGORIES}

    def save(self, path) -> None:
        atomic.write_json(path, self.to_dict())
