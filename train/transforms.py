"""Label-true augmentation on the original image, before runtime.preprocess.letterbox.

No flips: a mirrored digit is not the same digit. Scale jitter and translation are one
operation here: the image is re-framed by a rectangle that always contains every box (so no
digit is cut) and letterboxing then maps that frame onto the canvas; since letterboxing
normalises size, re-framing is what changes the digits' size and position on the canvas.
Area outside the image is filled with the image's mean colour (never mirrored pixels, which
would create unlabelled digit fragments).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter


def reframe(
    rgb: np.ndarray,
    boxes: np.ndarray,
    rng: np.random.Generator,
    zoom: tuple[float, float],
    aspect_jitter: float,
    shift: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Crop/pad `rgb` to a random frame holding every box; boxes (x1 y1 x2 y2) move with it."""
    h, w = rgb.shape[:2]
    z = float(np.exp(rng.uniform(np.log(zoom[0]), np.log(zoom[1]))))
    a = float(np.exp(rng.uniform(-aspect_jitter, aspect_jitter)))
    fw, fh = w * z * a, h * z
    if len(boxes):
        bx1, by1 = boxes[:, 0].min(), boxes[:, 1].min()
        bx2, by2 = boxes[:, 2].max(), boxes[:, 3].max()
    else:
        bx1, by1, bx2, by2 = 0.0, 0.0, float(w), float(h)
    fw, fh = max(fw, bx2 - bx1), max(fh, by2 - by1)
    # Frame's left edge: centred on the image by default, moved by `shift` of the free range,
    # and always within [bx2 - fw, bx1] so the boxes stay inside.
    lo_x, hi_x = bx2 - fw, bx1
    lo_y, hi_y = by2 - fh, by1
    cx = min(max((w - fw) / 2, lo_x), hi_x)
    cy = min(max((h - fh) / 2, lo_y), hi_y)
    x0 = cx + rng.uniform(-shift, shift) * fw
    y0 = cy + rng.uniform(-shift, shift) * fh
    x0 = int(np.floor(min(max(x0, lo_x), hi_x)))
    y0 = int(np.floor(min(max(y0, lo_y), hi_y)))
    out_w = max(int(np.ceil(fw)), int(np.ceil(bx2)) - x0, 1)
    out_h = max(int(np.ceil(fh)), int(np.ceil(by2)) - y0, 1)
    fill = rgb.reshape(-1, 3).mean(axis=0).round().astype(np.uint8)
    out = np.empty((out_h, out_w, 3), dtype=np.uint8)
    out[:] = fill
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + out_w, w), min(y0 + out_h, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    moved = boxes.astype(np.float32) - np.array([x0, y0, x0, y0], dtype=np.float32)
    return out, moved


def photometric(rgb: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast, saturation, channel order, occasional grey, blur or inversion."""
    if strength <= 0:
        return rgb
    img = Image.fromarray(rgb)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhance(img).enhance(float(rng.uniform(1 - strength, 1 + strength)))
    if rng.random() < 0.1:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    out = np.asarray(img)
    out = out[:, :, rng.permutation(3)]  # hue change that keeps digit/background contrast
    if rng.random() < 0.1:
        out = np.repeat(out.mean(axis=2, keepdims=True).round().astype(np.uint8), 3, axis=2)
    if rng.random() < 0.1:
        out = 255 - out  # light-on-dark <-> dark-on-light; both occur on house numbers
    return np.ascontiguousarray(out)
