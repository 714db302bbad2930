"""The preprocessing contract: every image becomes RGB uint8, letterboxed into a fixed canvas.

Training, export parity checks and the reader all call these functions, so they
see the same pixels. The canvas (H, W) is part of a model's config and travels
with it in model.json.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from digit_reader.runtime.errors import ImageError

# Decompression-bomb guard: SVHN photos are tiny; 40 MP still admits an 8K camera frame.
MAX_PIXELS = 40_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> HxWx3 uint8. 16/32-bit grey keeps its top 8 bits; alpha is dropped."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.int64)
        grey = (np.clip(arr, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        grey = np.clip(np.asarray(img), 0, 255).round().astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


@dataclass(frozen=True)
class EncodedImage:
    """An image file's bytes, read elsewhere (e.g. by Ray Data's read stage), with the name the
    file's errors are reported under. open_rgb treats it exactly as the file itself."""

    name: str
    data: bytes


def read_encoded(path: str | os.PathLike, opener=open) -> EncodedImage:
    """The bytes of an image file, unchecked; ImageError with open_rgb's reasons if the file
    cannot be read. `opener(path, "rb")` may open other filesystems (a URI)."""
    try:
        with opener(path, "rb") as f:
            return EncodedImage(str(path), f.read())
    except OSError as e:
        raise _image_error(path, e) from None


def _image_error(name, e: Exception) -> ImageError:
    """The one-line reason for an exception met while reading or decoding an image."""
    if isinstance(e, FileNotFoundError):
        return ImageError(name, "no such file")
    if isinstance(e, IsADirectoryError):
        return ImageError(name, "is a directory, not an image")
    if isinstance(e, UnidentifiedImageError):
        return ImageError(name, "not an image file PIL can read")
    if isinstance(e, Image.DecompressionBombError):
        return ImageError(name, f"decompression-bomb guard: {e}")
    return ImageError(name, f"truncated or corrupt image data ({e})")


def open_rgb(source, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read a file path (or EncodedImage / file object / PIL image / uint8 array) as HxWx3 uint8
    RGB, EXIF orientation applied.

    Raises ImageError with a one-line reason for anything that is not a readable image.
    """
    if isinstance(source, np.ndarray):
        grey = source.ndim == 2
        if source.dtype != np.uint8 or not (grey or (source.ndim == 3 and source.shape[2] >= 3)):
            raise ImageError("<array>", "arrays must be uint8 HxW (grey) or HxWx3/4 (RGB[A])")
        rgb = np.repeat(source[:, :, None], 3, 2) if grey else source[:, :, :3]
        return np.ascontiguousarray(rgb)
    if isinstance(source, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(source))
    name = source if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "<stream>")
    try:
        if isinstance(source, EncodedImage):
            source, size = io.BytesIO(source.data), len(source.data)
        else:
            size = os.path.getsize(source) if isinstance(source, (str, os.PathLike)) else None
        if size == 0:
            raise ImageError(name, "empty file (0 bytes)")
        with Image.open(source) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(
                    name,
                    f"image is {w}x{h} = {w * h:,} pixels, over the {max_pixels:,}-pixel limit "
                    "(decompression-bomb guard)",
                )
            img.load()
            return _to_rgb(ImageOps.exif_transpose(img))
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise _image_error(name, e) from None


def letterbox(rgb: np.ndarray, canvas_hw: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Scale `rgb` by min(H/h, W/w) (bilinear) and paste it top-left on a zero HxWx3 canvas.

    Returns (canvas, scale); a box in image pixels maps to canvas pixels as box * scale.
    """
    canvas_h, canvas_w = canvas_hw
    h, w = rgb.shape[:2]
    scale = min(canvas_h / h, canvas_w / w)
    new_w = min(canvas_w, max(1, round(w * scale)))
    new_h = min(canvas_h, max(1, round(h * scale)))
    if (new_w, new_h) != (w, h):
        rgb = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.BILINEAR))
    canvas = np.zeros((canvas_h, canvas_w, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = rgb
    return canvas, scale


def boxes_to_canvas(boxes_xyxy: np.ndarray, scale: float) -> np.ndarray:
    return np.asarray(boxes_xyxy, dtype=np.float32) * np.float32(scale)


def boxes_from_canvas(
    boxes_xyxy: np.ndarray, scale: float, image_wh: tuple[int, int] | None = None
) -> np.ndarray:
    """Canvas pixels -> original image pixels, clipped to the image when its size is given."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float32) / np.float32(scale)
    if image_wh is not None:
        w, h = image_wh
        boxes = boxes.copy()
        boxes[..., 0::2] = boxes[..., 0::2].clip(0, w)
        boxes[..., 1::2] = boxes[..., 1::2].clip(0, h)
    return boxes


def sharpened(rgb: np.ndarray) -> np.ndarray:
    """The seed report's Table 5 input sharpening (PIL's SHARPEN kernel), before letterboxing.

    Part of the contract only for models trained with it (model.json's `sharpen`).
    """
    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.SHARPEN))


def load_canvas(
    source, canvas_hw: tuple[int, int], sharpen: bool = False
) -> tuple[np.ndarray, float, tuple[int, int]]:
    """open_rgb (+ sharpen) + letterbox as CHW uint8, the graph's input layout.

    Returns (chw, scale, (w, h)).
    """
    rgb = open_rgb(source)
    if sharpen:
        rgb = sharpened(rgb)
    canvas, scale = letterbox(rgb, canvas_hw)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1)), scale, (rgb.shape[1], rgb.shape[0])


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES
