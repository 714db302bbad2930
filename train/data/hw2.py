"""The HW2 data layout, the one format every part of the project reads and writes.

root/{train,valid,test}/N.png and root/{split}.json in COCO form: bbox = [x_min, y_min, w, h]
in pixels, category_id 1..10 = digit 0..9, image_id = int(stem) of the file name.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digit_reader.runtime import atomic
from digit_reader.runtime.contract import category_of, digit_of
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
    """What loading (or converting) a data set had to fix or skip, counted and never silent.

    Conversion fills in the rest: the sources it found, its per-split summaries, and how many
    images it hard-linked or had to copy.
    """

    clipped_boxes: int = 0
    dropped_boxes: int = 0
    warnings: list[str] = field(default_factory=list)
    found: list[str] = field(default_factory=list)
    splits: dict[str, dict] = field(default_factory=dict)
    linked: int = 0
    copied: int = 0

    def warn(self, message: str, limit: int = 20) -> None:
        if len(self.warnings) < limit:
            self.warnings.append(message)

    def lines(self) -> list[str]:
        """Warnings (the first 20) and the totals, ready for stderr."""
        lines = [f"warning: {w}" for w in self.warnings]
        if self.clipped_boxes or self.dropped_boxes:
            lines.append(
                f"warning: {self.clipped_boxes} box(es) clipped to their image, "
                f"{self.dropped_boxes} dropped for having no area inside it"
            )
        return lines

    def clip(self, where: str, xywh, size_wh, warn_clipped: bool = True):
        """clip_box_xywh(*xywh, *size_wh), counted as clipped or dropped and warned about as
        `where`; a dropped box is always named, a clipped one only with `warn_clipped`."""
        (x, y, w, h), (width, height) = xywh, size_wh
        box = clip_box_xywh(x, y, w, h, width, height)
        if box is None:
            self.dropped_boxes += 1
            self.warn(
                f"{where} box {[x, y, w, h]} has no area inside the {width}x{height} image; dropped"
            )
        elif box != (x, y, x + w, y + h):
            self.clipped_boxes += 1
            if warn_clipped:
                self.warn(
                    f"{where} box {[x, y, w, h]} reaches outside the {width}x{height} image; "
                    "clipped"
                )
        return box


def clip_box_xywh(x, y, w, h, width, height) -> tuple[float, float, float, float] | None:
    """Box [x, y, w, h] clipped to a width x height image, as (x1, y1, x2, y2); None when less
    than one pixel of width or height is left inside (so always when w <= 0 or h <= 0)."""
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x2 - x1 < 1.0 or y2 - y1 < 1.0:
        return None
    return x1, y1, x2, y2


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
    coco, anns = _read_coco(json_path)
    images = _read_images(json_path, image_dir, coco["images"], verify_images)
    for i, ann in enumerate(anns):
        _add_annotation(json_path, i, ann, images, report)
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


def _read_coco(json_path: Path) -> tuple[dict, list]:
    """(coco, annotations) of a split's json, its shape and categories checked before any entry
    is read, so a json that is not HW2's fails with one message rather than per entry."""
    coco = _read_json(json_path)
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise DataError(f"{json_path}: expected a COCO object with an 'images' list")
    anns = coco.get("annotations", [])
    if not isinstance(anns, list):
        raise DataError(f"{json_path}: 'annotations' must be a list")
    _check_categories(json_path, coco.get("categories"))
    return coco, anns


def _read_images(json_path: Path, image_dir: Path, entries: list, verify_images: bool) -> dict:
    """{image_id: image} for the json's images, each checked (id, plain file name, size, file
    present, and decoded with `verify_images`) so annotations can be attached by id."""
    images: dict[int, dict] = {}
    for i, im in enumerate(entries):
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
    return images


def _add_annotation(json_path: Path, i: int, ann, images: dict, report: LoadReport) -> None:
    """Attach annotations[i] to its image, clipped to it (or dropped, counted in `report`);
    a malformed entry, an unknown image id or a category outside 1..10 is a DataError."""
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
    where = f"{json_path}: annotations[{i}] (image {image_id})"
    box = report.clip(where, (x, y, w, h), (im["w"], im["h"]))
    if box is not None:
        im["boxes"].append(box)
        im["digits"].append(digit_of(cat))


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
        if (
            isinstance(name, str)
            and name.isdigit()
            and len(name) == 1
            and cid != category_of(int(name))
        ):
            raise DataError(
                f"{json_path}: categories[{i}] maps id {cid!r} to {name!r}; HW2 uses "
                f"category_id = digit + 1 (id {category_of(int(name))} for {name!r})"
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
                    "category_id": category_of(int(d)),
                    "area": float(w) * float(h),
                    "iscrowd": 0,
                }
            )

    def to_dict(self) -> dict:
        return {"images": self.images, "annotations": self.annotations, "categories": CATEGORIES}

    def save(self, path, info: dict | None = None) -> None:
        coco = {} if info is None else {"info": info}
        coco.update(self.to_dict())
        atomic.write_json(path, coco)

    def summary(self) -> dict:
        """Images, boxes and the histogram of digits per image (images with boxes only)."""
        per_image = Counter(a["image_id"] for a in self.annotations)
        return {
            "images": len(self.images),
            "boxes": len(self.annotations),
            "digit_counts": dict(sorted(Counter(per_image.values()).items())),
        }


@contextlib.contextmanager
def staging(root, splits: Iterable[str], overwrite: bool, prefix: str) -> Iterator[Path]:
    """A hidden temporary folder inside `root` to make splits in, removed at the end.

    Refuses (before creating anything) splits whose folder or json exists unless `overwrite`;
    making the splits inside `root` keeps write_splits' moves on one file system.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: exists and is not a directory")
    clash = [p for s in splits for p in (root / s, root / f"{s}.json") if p.exists()]
    if clash and not overwrite:
        raise DataError(f"{clash[0]} already exists; choose another output or remove it")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_splits(
    root, staged: Path, writers: dict[str, CocoWriter], info: Callable[[str, CocoWriter], dict]
) -> dict[str, dict]:
    """Move each staged/{split} folder to root/{split} and write root/{split}.json after it.

    The old json goes first and the new one is written atomically last, so an interrupted run
    never leaves a json pointing at missing images. `info(split, writer)` is the json's info
    block. Returns {split: CocoWriter.summary()}.
    """
    root = Path(root)
    summaries = {}
    for split, writer in writers.items():
        final, json_path = root / split, root / f"{split}.json"
        json_path.unlink(missing_ok=True)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staged / split, final)
        writer.save(json_path, info(split, writer))
        summaries[split] = writer.summary()
    return summaries
