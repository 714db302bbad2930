"""Pictures of what the reader decided: boxes, digits and scores over the image, the number in
a banner. People check a detector by looking at it.

Drawn from the decoded predictions (runtime.decode.Prediction), not from a backend, so every
backend (ONNX Runtime, TensorRT, Triton, Ray) draws the same way. Pillow only, no torch.

SVHN crops are small (median ~30 px high), so an image is first enlarged by the smallest whole
factor that makes it at least MIN_HEIGHT pixels high, with nearest-neighbour resampling: every
source pixel becomes a clean square and a box at x maps exactly to x * factor.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from digit_reader.runtime import atomic
from digit_reader.runtime.decode import NO_DIGIT, Detections, Prediction

MIN_HEIGHT = 192  # enlarge smaller images by a whole factor until they are at least this high
MAX_FACTOR = 8
KEPT = (255, 0, 255)  # a kept digit's box: magenta, rare in street photos
FAINT = (0, 200, 255)  # below the threshold (--draw-all): thin cyan
LABEL_BG = (0, 0, 0)
LABEL_FG = (255, 255, 255)
BANNER_BG = (32, 32, 32)
BANNER_FG = (255, 255, 255)
BOX_WIDTH = 2


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def enlargement(height: int) -> int:
    """The whole factor a `height`-pixel image is enlarged by before drawing."""
    return max(1, min(MAX_FACTOR, math.ceil(MIN_HEIGHT / max(height, 1))))


def draw_prediction(
    image: np.ndarray | Image.Image, pred: Prediction, draw_all: bool = False
) -> Image.Image:
    """The image, enlarged, with the kept digits' boxes in reading order, each labelled with
    its digit and score, below-threshold boxes faint when `draw_all`, and a banner above it
    with the decoded number ("-1" when no digit was kept)."""
    rgb = image.convert("RGB") if isinstance(image, Image.Image) else Image.fromarray(image)
    k = enlargement(rgb.height)
    big = rgb.resize((rgb.width * k, rgb.height * k), Image.NEAREST)
    font = _font(14)
    banner_h = 24
    out = Image.new("RGB", (max(big.width, 160), big.height + banner_h), BANNER_BG)
    out.paste(big, (0, banner_h))
    pen = ImageDraw.Draw(out)
    kept = set(pred.order.tolist())

    def box_at(i: int) -> tuple[float, float, float, float]:
        x1, y1, x2, y2 = (float(v) * k for v in pred.boxes[i])
        # PIL's rectangle includes x2, y2; a box under a pixel wide is drawn one pixel wide
        return x1, y1 + banner_h, max(x1, x2 - 1), max(y1, y2 - 1) + banner_h

    if draw_all:
        for i in range(len(pred.scores)):
            if i not in kept and pred.boxes[i, 2] > pred.boxes[i, 0]:
                pen.rectangle(box_at(i), outline=FAINT, width=1)
    for i in pred.order.tolist():
        pen.rectangle(box_at(i), outline=KEPT, width=BOX_WIDTH)
    for rank, i in enumerate(pred.order.tolist()):  # labels after boxes: never under a box edge
        x1, y1, _, y2 = box_at(i)
        text = f"{int(pred.digits[i])} {pred.scores[i]:.2f}"
        left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
        w, h = right - left + 4, bottom - top + 4
        # above the box where there is room below the banner, else below it; alternate rows
        y = y1 - h - 2 if (rank % 2 == 0 and y1 - h - 2 >= banner_h) else y2 + 3
        y = min(max(y, banner_h), out.height - h)
        x = min(max(x1, 0), out.width - w)
        pen.rectangle((x, y, x + w - 1, y + h - 1), fill=LABEL_BG)
        pen.text((x + 2 - left, y + 2 - top), text, fill=LABEL_FG, font=font)
    number = "no digit (-1)" if pred.number == NO_DIGIT else pred.number
    pen.text((6, 4), f"number: {number}", fill=BANNER_FG, font=_font(15))
    return out


def drawing_name(path: str | os.PathLike) -> str:
    """The drawing of `dir/1.jpg` is `1.png`: same name, PNG."""
    return Path(path).stem + ".png"


def save_png(image: Image.Image, path: str | os.PathLike) -> None:
    with atomic.atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def contact_sheet(
    drawings: list[Image.Image], columns: int = 6, cell: tuple[int, int] = (300, 150)
) -> Image.Image:
    """Drawings in a grid, left to right, each fitted into a `cell` (w, h), aspect kept."""
    if not drawings:
        raise ValueError("a contact sheet needs at least one drawing")
    gap, (cell_w, cell_h) = 6, cell
    rows = math.ceil(len(drawings) / columns)
    size = (columns * (cell_w + gap) + gap, rows * (cell_h + gap) + gap)
    sheet = Image.new("RGB", size, (255, 255, 255))
    for i, d in enumerate(drawings):
        f = min(cell_w / d.width, cell_h / d.height)
        fitted = d.resize((max(1, round(d.width * f)), max(1, round(d.height * f))), Image.BILINEAR)
        r, c = divmod(i, columns)
        sheet.paste(fitted, (gap + c * (cell_w + gap), gap + r * (cell_h + gap)))
    return sheet


def side_by_side(
    left: Image.Image, right: Image.Image, titles: tuple[str, str], gap: int = 8
) -> Image.Image:
    """Two drawings next to each other with a title above each (parity pictures)."""
    font = _font(14)
    title_h = 22
    h = max(left.height, right.height) + title_h
    out = Image.new("RGB", (left.width + right.width + gap, h), (255, 255, 255))
    pen = ImageDraw.Draw(out)
    for x, img, title in ((0, left, titles[0]), (left.width + gap, right, titles[1])):
        pen.text((x + 4, 3), title, fill=(0, 0, 0), font=font)
        out.paste(img, (x, title_h))
    return out


class Drawer:
    """What digit-read does with --draw DIR / --sheet FILE: one PNG per image read (same name),
    and a contact sheet of the first `sheet_images` drawings."""

    def __init__(
        self,
        out_dir: str | os.PathLike | None,
        draw_all: bool = False,
        sheet: str | os.PathLike | None = None,
        sheet_images: int = 24,
    ):
        self.out_dir = Path(out_dir) if out_dir else None
        self.draw_all, self.sheet, self.sheet_images = draw_all, sheet, sheet_images
        self.drawn: list[Image.Image] = []
        if self.out_dir:
            self.out_dir.mkdir(parents=True, exist_ok=True)

    def add(self, source, pred: Prediction) -> None:
        """Draw one image that was read; `source` is what was read (a path, array or image)."""
        from digit_reader.runtime.preprocess import open_rgb

        drawing = draw_prediction(open_rgb(source), pred, self.draw_all)
        if self.out_dir:
            save_png(drawing, self.out_dir / drawing_name(source))
        if self.sheet and len(self.drawn) < self.sheet_images:
            self.drawn.append(drawing)

    def close(self) -> None:
        if self.sheet and self.drawn:
            save_png(contact_sheet(self.drawn), self.sheet)


def comparison(
    image: np.ndarray | Image.Image,
    ref: Detections,
    other: Detections,
    names: tuple[str, str],
    threshold: float,
) -> Image.Image:
    """The reference's reading (left) beside another form's (right) of the same image."""
    left, right = (Prediction.decode(d, threshold) for d in (ref, other))
    titles = (f"{names[0]}: {left.number}", f"{names[1]}: {right.number}")
    return side_by_side(draw_prediction(image, left), draw_prediction(image, right), titles)


def write_comparisons(
    out_dir: str | os.PathLike,
    items: list[tuple[str, object, Detections, Detections]],
    names: tuple[str, str],
    threshold: float,
) -> list[Path]:
    """One comparison PNG per (image name, image, reference, other) in `out_dir`; returns the
    paths. The image is anything open_rgb takes (a path, an HxWx3 array)."""
    from digit_reader.runtime.preprocess import open_rgb

    out_dir = Path(out_dir)
    paths = []
    for name, image, ref, other in items:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / drawing_name(name)
        save_png(comparison(open_rgb(image), ref, other, names, threshold), path)
        paths.append(path)
    return paths
