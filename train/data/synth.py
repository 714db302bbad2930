"""Synthetic SVHN-like house-number crops in the HW2 layout: the project's embedded default data.

Geometry comes from real SVHN train layouts (layouts.py): digit count, box heights,
vertical offsets and gaps, and the crop's left and top margins are taken from one real image,
all in original pixels, so box-size statistics match real SVHN. The layouts hold no image
sizes; SVHN format-1 images are crops with context around the number, so the right and bottom
margins are drawn from the left and top margins of another real layout (as ratios of its block
height), i.e. margins are assumed symmetric in distribution. Glyphs come from fonts shipped
inside pip packages (matplotlib's DejaVu, STIX and Computer Modern, Pillow's default font) so the
output does not depend on system fonts. Every box is the tight bounds of its glyph's pixels
(alpha >= 128) measured after the geometric transform.

One image depends only on (seed, split, index), so splits are independent and can be made in
parallel with byte-identical results.
"""

from __future__ import annotations

import importlib.util
import io
import math
import multiprocessing
import operator
import zlib
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from digit_reader.runtime.errors import UserError
from digit_reader.train.data import layouts as layouts_mod
from digit_reader.train.data.hw2 import SPLITS, CocoWriter, staging, write_splits

SYNTH_VERSION = "svhn-like-1"

# Fixed list (not a directory scan) so a new matplotlib release cannot change the output.
# None = Pillow's built-in FreeType font (Aileron).
FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmss10.ttf",
    "cmti10.ttf",
    "cmtt10.ttf",
    None,
)
BASE_SIZE = 128  # font size of the cached glyph masks; glyphs are resized down from these
INK = 128  # alpha at or above which a pixel belongs to a glyph (and so to its box)

WALLS = np.array(
    [
        (222, 208, 175), (236, 234, 226), (160, 158, 152), (148, 78, 58), (112, 84, 62),
        (58, 58, 62), (206, 186, 122), (120, 130, 146), (92, 110, 84), (190, 190, 196),
        (176, 150, 120), (90, 70, 60),
    ],
    dtype=np.float32,
)  # fmt: skip
PLATES = np.array(
    [
        (28, 70, 160), (24, 96, 58), (20, 20, 24), (240, 240, 236), (184, 152, 72),
        (150, 30, 34), (30, 40, 90), (210, 205, 190), (70, 70, 76),
    ],
    dtype=np.float32,
)  # fmt: skip


def _luma(c: np.ndarray) -> float:
    return float(c[0] * 0.299 + c[1] * 0.587 + c[2] * 0.114)


def _with_luma(c: np.ndarray, target: float) -> np.ndarray:
    """Colour `c` darkened or lightened (towards white) to luminance `target`."""
    lum = _luma(c)
    if target <= lum:
        return c * (target / max(lum, 1e-3))
    t = (target - lum) / max(255.0 - lum, 1e-3)
    return c + (255.0 - c) * t


@lru_cache(maxsize=1)
def font_paths() -> tuple[str | None, ...]:
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("synthetic data needs matplotlib's fonts: pip install matplotlib")
    ttf = Path(spec.submodule_search_locations[0]) / "mpl-data" / "fonts" / "ttf"
    found = tuple(f if f is None else str(ttf / f) for f in FONT_FILES)
    missing = [f for f in found if f is not None and not Path(f).is_file()]
    if missing:
        raise UserError(f"matplotlib is missing fonts the generator uses: {missing[0]}")
    return found


@cache
def _font(index: int) -> ImageFont.FreeTypeFont:
    path = font_paths()[index]
    if path is None:
        return ImageFont.load_default(BASE_SIZE)
    return ImageFont.truetype(path, BASE_SIZE)


@lru_cache(maxsize=4096)
def _glyph(font: int, digit: int, weight: int) -> np.ndarray:
    """Tight uint8 alpha mask of one digit at BASE_SIZE; weight -1 thin, 0 regular, 1 bold."""
    canvas = Image.new("L", (BASE_SIZE * 2, BASE_SIZE * 2))
    stroke = 4 if weight > 0 else 0
    ImageDraw.Draw(canvas).text(
        (BASE_SIZE // 2, BASE_SIZE // 4),
        str(digit),
        font=_font(font),
        fill=255,
        stroke_width=stroke,
        stroke_fill=255,
    )
    if weight < 0:
        canvas = canvas.filter(ImageFilter.MinFilter(3))
    a = np.asarray(canvas)
    rows, cols = np.flatnonzero(a.max(1) >= INK), np.flatnonzero(a.max(0) >= INK)
    return np.ascontiguousarray(a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])


def _sized(glyph: np.ndarray, w: int, h: int) -> Image.Image:
    """Glyph resized to w x h; strokes thinner than a pixel are darkened to full ink, as hinting
    would, so small thin-font digits stay readable and keep a full-height mask."""
    a = np.asarray(Image.fromarray(glyph).resize((w, h), Image.Resampling.BILINEAR))
    top = int(np.percentile(a[a > 0], 97)) if a.any() else 255
    if top < 250:
        a = np.minimum(a.astype(np.uint16) * 255 // max(top, 1), 255).astype(np.uint8)
    return Image.fromarray(a)


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


@dataclass
class Rendered:
    image: np.ndarray  # (H, W, 3) uint8, final pixels
    boxes: np.ndarray  # (k, 4) float64 x y w h, tight around the glyph masks
    digits: np.ndarray  # (k,) int64
    masks: list[tuple[int, int, np.ndarray]]  # per digit: x0, y0, bool glyph pixels (local)

    @property
    def number(self) -> str:
        return "".join(str(d) for d in self.digits)


@dataclass
class _Style:
    font: int
    weight: int
    stretch: float
    digit_rgb: np.ndarray
    plate: np.ndarray | None  # plate colour, None = digits painted on the wall
    plate_pad: float
    border: np.ndarray | None
    shadow: np.ndarray | None  # drop-shadow colour
    outline: np.ndarray | None


def _pick(rng: np.random.Generator, hist) -> int:
    p = np.asarray(hist, dtype=np.float64)
    return int(rng.choice(len(p), p=p / p.sum()))


def sample_layout(rng: np.random.Generator):
    """(digits (k,), boxes (k, 4) xywh relative to the block, margins l t r b) from real SVHN."""
    lay = layouts_mod.load()
    ks = sorted(lay.count_hist)
    k = ks[_pick(rng, [lay.count_hist[k] for k in ks])]
    options = lay.by_count[k]
    margins, boxes = options[int(rng.integers(len(options)))]
    digits = [_pick(rng, lay.first_digit_hist)]
    digits += [_pick(rng, lay.digit_hist) for _ in range(k - 1)]
    # right/bottom margin: another real crop's left/top margin as a fraction of its block height
    k2 = ks[_pick(rng, [lay.count_hist[k] for k in ks])]
    m2, b2 = lay.by_count[k2][int(rng.integers(len(lay.by_count[k2])))]
    block_h = (boxes[:, 1] + boxes[:, 3]).max()
    block_h2 = (b2[:, 1] + b2[:, 3]).max()
    right, bottom = m2 * (block_h / block_h2)
    # a real box can poke out of its crop by a pixel; keep every glyph inside the image
    margins = np.maximum([margins[0], margins[1], right, bottom], 1.0)
    # box heights within one real image differ mostly by annotation noise; glyphs drawn at those
    # heights look like superscripts, so halve the spread about the image's median, same centres
    boxes = boxes.copy()
    med = np.median(boxes[:, 3])
    smooth = np.round(med + 0.5 * (boxes[:, 3] - med))
    boxes[:, 1] += (boxes[:, 3] - smooth) / 2
    boxes[:, 3] = smooth
    return np.array(digits), boxes, margins


def _style(rng: np.random.Generator, wall: np.ndarray, difficulty: float) -> _Style:
    plate = None
    if rng.random() < 0.55:
        plate = PLATES[rng.integers(len(PLATES))] + rng.normal(0, 12, 3)
    ground = np.clip(plate if plate is not None else wall, 0, 255)
    lum = _luma(ground)
    gap = float(rng.uniform(70, 160)) * (1.25 - 0.25 * min(difficulty, 2.0))
    target = lum - gap if (lum > 128) == (rng.random() < 0.85) else lum + gap
    if not 0 <= target <= 255:
        target = lum - gap if lum - gap >= 0 else lum + gap
    target = float(np.clip(target, 0, 255))
    base = rng.uniform(0, 255, 3) if rng.random() < 0.5 else np.full(3, 128.0)
    digit = np.clip(_with_luma(base * rng.uniform(0.5, 1.0) + 20, target), 0, 255)
    border = None
    if plate is not None and rng.random() < 0.4:
        border = digit if rng.random() < 0.6 else np.clip(plate * 0.6, 0, 255)
    shadow = None
    if rng.random() < 0.25:
        shadow = np.clip(ground * 0.45, 0, 255)
    outline = None
    if rng.random() < 0.12:
        outline = np.clip(_with_luma(rng.uniform(0, 255, 3), 255 - target), 0, 255)
    font = int(rng.integers(len(FONT_FILES)))
    heavy = "Bol" in str(FONT_FILES[font]) or FONT_FILES[font] == "cmb10.ttf"
    return _Style(
        font=font,
        weight=int(rng.choice([-1, 0, 0, 1] if heavy else [0, 0, 1])),
        stretch=float(rng.uniform(0.58, 1.05)),  # real SVHN digits are narrow
        digit_rgb=digit.astype(np.float32),
        plate=None if plate is None else np.clip(plate, 0, 255).astype(np.float32),
        plate_pad=float(rng.uniform(0.12, 0.5)),
        border=border,
        shadow=shadow,
        outline=outline,
    )


def _transform(rng, cx: float, cy: float, bw: float, bh: float, d: float) -> np.ndarray:
    """A small homography about the block centre: rotation, shear, perspective."""
    theta = math.radians(float(np.clip(rng.normal(0, 2.5 * d), -6 * d, 6 * d)))
    shear = float(rng.uniform(-0.15, 0.15) * d)
    px = float(rng.uniform(-0.12, 0.12) * d) / max(bw, 1.0)
    py = float(rng.uniform(-0.08, 0.08) * d) / max(bh, 1.0)
    # a rotated glyph's tight box is taller by about (w/h) sin|theta|: shrink to keep heights real
    s = 1.0 / (math.cos(theta) + 0.55 * abs(math.sin(theta)))
    c, si = math.cos(theta) * s, math.sin(theta) * s
    rot_shear = np.array([[c, -si + c * shear, 0], [si, c + si * shear, 0], [0, 0, 1]])
    persp = np.array([[1, 0, 0], [0, 1, 0], [px, py, 1]])
    to_c = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]])
    back = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1]])
    return back @ persp @ rot_shear @ to_c


def _apply(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    q = np.c_[pts, np.ones(len(pts))] @ h.T
    return q[:, :2] / q[:, 2:3]


def _warp(mask: Image.Image, h: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Warp `mask` by homography `h` (mask coords -> output coords) into an output of size_wh."""
    inv = np.linalg.inv(h)
    inv = inv / inv[2, 2]
    out = mask.transform(
        size_wh, Image.Transform.PERSPECTIVE, tuple(inv.reshape(-1)[:8]), Image.Resampling.BILINEAR
    )
    return np.asarray(out)


def _corners(x: float, y: float, w: float, h: float) -> np.ndarray:
    return np.array([[x, y], [x + w, y], [x, y + h], [x + w, y + h]], dtype=np.float64)


def _shift(dx: float, dy: float) -> np.ndarray:
    return np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1]], dtype=np.float64)


def _smooth_noise(rng, h: int, w: int, cells: int) -> np.ndarray:
    grid = rng.normal(0, 1, (max(2, cells * h // max(w, 1) + 1), cells + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, "F").resize((w, h), Image.Resampling.BILINEAR))


def _background(
    rng, h: int, w: int, wall: np.ndarray, keep_out: tuple[int, int], plate: bool
) -> np.ndarray:
    """Wall: base colour, texture (plain, siding, bricks), smooth blotches, bands in the margins.

    Bricks only behind a plate: digits painted on bricks would lose their contrast rule."""
    img = np.empty((h, w, 3), np.float32)
    img[:] = wall
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    kind = rng.random()
    if kind < 0.2:  # horizontal siding
        period = float(rng.uniform(0.15, 0.5)) * h
        img *= (1 - 0.12 * ((yy % period) < max(1.0, period * 0.12)))[..., None]
    elif kind < 0.32 and plate:  # bricks
        p = max(3.0, float(rng.uniform(0.12, 0.3)) * h)
        row = (yy // p) % 2
        mortar = ((yy % p) < max(1.0, p * 0.15)) | (((xx + row * p) % (2 * p)) < max(1.0, p * 0.15))
        img = np.where(mortar[..., None], np.float32(rng.uniform(150, 220)), img)
    img *= 1 + 0.08 * _smooth_noise(rng, h, w, int(rng.integers(2, 6)))[..., None]
    for _ in range(int(rng.integers(0, 3))):  # frames, pipes, neighbouring walls
        bw = max(1, int(rng.uniform(0.03, 0.25) * w))
        left_side = rng.random() < 0.5
        lo, hi = (0, keep_out[0] - bw) if left_side else (keep_out[1], w - bw)
        if hi <= lo:
            continue
        x0 = int(rng.integers(lo, hi + 1))
        img[:, x0 : x0 + bw] = WALLS[rng.integers(len(WALLS))] * float(rng.uniform(0.5, 1.1))
    return img


def _paint(img: np.ndarray, x0: int, y0: int, alpha: np.ndarray, rgb, opacity: float = 1.0):
    a = (alpha.astype(np.float32) * (opacity / 255.0))[..., None]
    region = img[y0 : y0 + alpha.shape[0], x0 : x0 + alpha.shape[1]]
    region *= 1 - a
    region += a * np.asarray(rgb, np.float32)


def render(seed: int, split: str, index: int, difficulty: float = 1.0) -> Rendered:
    """One synthetic crop; depends only on its arguments.

    Every step draws from the one generator in this order (layout, wall, style, spacing,
    transform, background, plate, distractors, lighting, camera): reordering them would change
    every image a seed makes."""
    rng = image_rng(seed, split, index)
    d = float(difficulty)
    digits, boxes, margins = sample_layout(rng)
    wall = np.clip(WALLS[rng.integers(len(WALLS))] + rng.normal(0, 18, 3), 0, 255)
    st = _style(rng, wall, d)
    mean_h = float(boxes[:, 3].mean())
    masks, places = _set_glyphs(rng, digits, boxes, st, mean_h)
    corners = np.concatenate(
        [_corners(px, py, m.width, m.height) for (px, py), m in zip(places, masks, strict=True)]
    )
    bx0, by0 = corners.min(0)
    bx1, by1 = corners.max(0)
    block = (bx0, by0, bx1, by1)
    t, tc, w, h = _frame(rng, corners, block, margins, d)

    keep_out = (int(tc[:, 0].min()), int(math.ceil(tc[:, 0].max())))
    img = _background(rng, h, w, wall, keep_out, st.plate is not None)
    if st.plate is not None:
        _plate(rng, img, st, t, block, mean_h)
    _distractors(rng, img, st, mean_h, tc)

    out_boxes, out_masks = [], []
    for (px, py), m in zip(places, masks, strict=True):
        rx0, ry0, alpha = _warped_glyph(m, t @ _shift(px, py), w, h)
        _paint_glyph(img, st, rx0, ry0, alpha, mean_h)
        box, mask = _ink_bounds(alpha, rx0, ry0)
        out_boxes.append(box)
        out_masks.append(mask)

    img = _lighting(rng, img)
    pixels = _degrade(rng, img, mean_h, d)
    return Rendered(
        image=pixels,
        boxes=np.asarray(out_boxes, np.float64),
        digits=np.asarray(digits, np.int64),
        masks=out_masks,
    )


def _set_glyphs(rng, digits: np.ndarray, boxes: np.ndarray, st: _Style, mean_h: float):
    """(masks, places): each digit's glyph at its layout height and its top-left corner in the
    block before the transform; spacing is the real gap between the layout's boxes plus a
    little air (one draw per gap), so a crowded real layout stays crowded."""
    masks, places = [], []
    x = 0.0
    for i, digit in enumerate(digits):
        g = _glyph(st.font, int(digit), st.weight)
        gh = int(boxes[i, 3])
        gw = max(1, round(gh * g.shape[1] / g.shape[0] * st.stretch))
        masks.append(_sized(g, gw, gh))
        places.append((x, float(boxes[i, 1])))
        if i + 1 < len(digits):
            gap = boxes[i + 1, 0] - (boxes[i, 0] + boxes[i, 2])
            x += gw + max(float(gap), -0.05 * mean_h) + float(rng.uniform(0.02, 0.12)) * mean_h
    return masks, places


def _frame(rng, corners: np.ndarray, block, margins, d: float):
    """(t, tc, w, h): the block's homography, moved so the warped block sits at the layout's
    left and top margins, the warped corners, and the image size that leaves the right and
    bottom margins beyond them: the margins are real SVHN's, measured on the warped block."""
    bx0, by0, bx1, by1 = block
    t = _transform(rng, (bx0 + bx1) / 2, (by0 + by1) / 2, bx1 - bx0, by1 - by0, d)
    tc = _apply(t, corners)
    left, top, right, bottom = margins
    t = _shift(left - tc[:, 0].min(), top - tc[:, 1].min()) @ t
    tc = _apply(t, corners)
    w = int(math.ceil(tc[:, 0].max() + right))
    h = int(math.ceil(tc[:, 1].max() + bottom))
    return t, tc, w, h


def _plate(rng, img: np.ndarray, st: _Style, t: np.ndarray, block, mean_h: float) -> None:
    """Paint the plate (and its border, one draw for its width) behind the digits: the block
    grown by plate_pad, warped by `t` like the digits so it tilts and recedes with them."""
    h, w = img.shape[:2]
    bx0, by0, bx1, by1 = block
    pad = st.plate_pad * mean_h
    rect = np.array([[bx0 - pad, by0 - pad * 0.7], [bx1 + pad, by0 - pad * 0.7]])
    rect = np.r_[rect, [[bx1 + pad, by1 + pad * 0.7], [bx0 - pad, by1 + pad * 0.7]]]
    poly = [tuple(p) for p in _apply(t, rect)]
    layer = Image.new("L", (w, h))
    draw = ImageDraw.Draw(layer)
    draw.polygon(poly, fill=255)
    _paint(img, 0, 0, np.asarray(layer), st.plate)
    if st.border is not None:
        edge = Image.new("L", (w, h))
        width = max(1, round(mean_h * float(rng.uniform(0.03, 0.08))))
        ImageDraw.Draw(edge).polygon(poly, outline=255, width=width)
        _paint(img, 0, 0, np.asarray(edge), st.border)


def _warped_glyph(m: Image.Image, gt: np.ndarray, w: int, h: int):
    """(rx0, ry0, alpha): glyph mask `m` warped by `gt` into the smallest region of the w x h
    image that holds it (a pixel of slack each side, for bilinear spill), and that region's
    top-left corner; warping a region, not the whole image, keeps big crops cheap."""
    q = _apply(gt, _corners(0, 0, m.width, m.height))
    rx0, ry0 = int(math.floor(q[:, 0].min())) - 1, int(math.floor(q[:, 1].min())) - 1
    rx0, ry0 = max(rx0, 0), max(ry0, 0)
    rx1 = min(int(math.ceil(q[:, 0].max())) + 1, w)
    ry1 = min(int(math.ceil(q[:, 1].max())) + 1, h)
    alpha = _warp(m, _shift(-rx0, -ry0) @ gt, (rx1 - rx0, ry1 - ry0))
    return rx0, ry0, alpha


def _paint_glyph(img: np.ndarray, st: _Style, rx0: int, ry0: int, alpha, mean_h: float) -> None:
    """Paint one warped glyph at (rx0, ry0): drop shadow, then outline, then the digit, so
    each lies under the next as on a real plate."""
    if st.shadow is not None:
        off = max(1, round(mean_h * 0.05))
        sa = alpha[: alpha.shape[0] - off, : alpha.shape[1] - off]
        _paint(img, rx0 + off, ry0 + off, sa, st.shadow, 0.7)
    if st.outline is not None:
        grown = Image.fromarray(alpha).filter(ImageFilter.MaxFilter(3))
        _paint(img, rx0, ry0, np.asarray(grown), st.outline)
    _paint(img, rx0, ry0, alpha, st.digit_rgb)


def _ink_bounds(alpha: np.ndarray, rx0: int, ry0: int):
    """(box xywh, (x0, y0, ink mask)) of a warped glyph in image pixels: the tight bounds of
    its pixels with alpha >= INK, measured after the transform so the box fits what is drawn."""
    ink = alpha >= INK
    if not ink.any():  # vanishingly thin glyph: take its strongest pixels
        ink = alpha >= max(1, int(alpha.max()))
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    box = (rx0 + x0, ry0 + y0, x1 - x0, y1 - y0)
    return box, (rx0 + int(x0), ry0 + int(y0), ink[y0:y1, x0:x1].copy())


def _distractors(rng, img: np.ndarray, st: _Style, mean_h: float, tc: np.ndarray) -> None:
    """Unlabelled neighbouring digits cut by the left or right border, as in real crops."""
    h, w = img.shape[:2]
    for side in (0, 1):
        if rng.random() >= 0.15:
            continue
        g = _glyph(st.font, int(rng.integers(10)), st.weight)
        gh = max(4, round(mean_h * float(rng.uniform(0.85, 1.15))))
        gw = max(2, round(gh * g.shape[1] / g.shape[0] * st.stretch))
        visible = max(1, round(gw * float(rng.uniform(0.15, 0.45))))
        room = tc[:, 0].min() if side == 0 else w - tc[:, 0].max()
        if visible > room - 0.3 * mean_h:
            continue
        a = np.asarray(_sized(g, gw, gh))
        a = a[:, gw - visible :] if side == 0 else a[:, :visible]
        y0 = int(np.clip(tc[:, 1].min() + rng.normal(0, 0.1 * mean_h), 0, max(0, h - gh)))
        a = a[: h - y0]
        _paint(img, 0 if side == 0 else w - visible, y0, a, st.digit_rgb)


def _lighting(rng, img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    yy = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    xx = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    gx, gy = rng.uniform(-0.35, 0.35, 2).astype(np.float32)
    light = float(rng.uniform(0.75, 1.15)) * (1 + gx * xx + gy * yy)
    if rng.random() < 0.2:  # a cast shadow with a straight edge
        ang = float(rng.uniform(0, 2 * math.pi))
        off = float(rng.uniform(-0.3, 0.3))
        side = (math.cos(ang) * xx + math.sin(ang) * yy) > off
        light = light * np.where(side, np.float32(rng.uniform(0.5, 0.8)), np.float32(1.0))
    img *= light[..., None]
    tint = rng.normal(1.0, 0.06, 3).astype(np.float32)
    grey = img.mean(2, keepdims=True)
    sat = np.float32(rng.uniform(0.55, 1.0))
    return (grey + (img - grey) * sat) * tint


def _degrade(rng, img: np.ndarray, mean_h: float, d: float) -> np.ndarray:
    """Camera and compression: low resolution, blur, noise, JPEG artefacts."""
    h, w = img.shape[:2]
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if rng.random() < 0.35 * min(d, 2.0) and mean_h > 16:
        f = float(rng.uniform(1.2, 1.2 + 0.8 * d))
        small = (max(4, round(w / f)), max(4, round(h / f)))
        pil = pil.resize(small, Image.Resampling.BILINEAR).resize((w, h), Image.Resampling.BILINEAR)
    sigma = float(rng.uniform(0.0, 0.045)) * mean_h * d
    if sigma > 0.3:
        pil = pil.filter(ImageFilter.GaussianBlur(min(sigma, 3.0)))
    arr = np.asarray(pil, dtype=np.float32)
    arr = arr + rng.normal(0, float(rng.uniform(0.5, 6.0)) * d, arr.shape).astype(np.float32)
    pil = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
    if rng.random() < 0.7:
        buf = io.BytesIO()
        quality = int(np.clip(rng.uniform(95 - 45 * d, 95), 20, 95))
        pil.save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        pil = Image.open(buf).convert("RGB")
    return np.asarray(pil)


def encode_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # level 3: a third of level 6's time for files about 10 % larger (noisy crops barely compress)
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _make(args: tuple[int, str, int, float]):
    seed, split, index, difficulty = args
    r = render(seed, split, index, difficulty)
    return encode_png(r.image), r.image.shape[1], r.image.shape[0], r.boxes, r.digits


def _int_at_least(value, low: int) -> int | None:
    """`value` as an int if it is an integer (not a bool) >= low, else None."""
    if isinstance(value, bool):
        return None
    try:
        n = operator.index(value)
    except TypeError:
        return None
    return n if n >= low else None


def _check(counts, seed, difficulty, workers) -> tuple[dict[str, int], int, int]:
    if _int_at_least(seed, 0) is None:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    if _int_at_least(workers, 1) is None:
        raise UserError(f"workers must be a positive integer, got {workers!r}")
    try:
        ok = 0.0 <= float(difficulty) <= 2.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UserError(f"difficulty must be a number in [0, 2], got {difficulty!r}")
    out = {}
    for split, n in counts.items():
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        if _int_at_least(n, 0) is None:
            raise UserError(f"{split}: image count must be a non-negative integer, got {n!r}")
        out[split] = _int_at_least(n, 0)
    ordered = {s: out[s] for s in SPLITS if s in out}
    return ordered, _int_at_least(seed, 0), _int_at_least(workers, 1)


def synthesize(
    root,
    counts: dict[str, int],
    seed: int,
    progress=None,
    *,
    difficulty: float = 1.0,
    workers: int = 1,
    overwrite: bool = False,
) -> dict:
    """Write root/{split}/1..N.png and root/{split}.json for each split in `counts`.

    Images go to a hidden temporary directory inside `root` that is renamed into place at the
    end, and each json is written atomically after its images, so an interrupted run leaves no
    json pointing at missing images. Existing splits are refused unless `overwrite`.
    `progress(n_done)` is called after every image with the count over all splits so far.
    Returns a summary: images, boxes and digit-count histogram per split.
    """
    counts, seed, workers = _check(counts, seed, difficulty, workers)
    root = Path(root)
    font_paths()
    summary: dict = {"root": str(root), "synth_version": SYNTH_VERSION, "seed": seed}
    summary.update(difficulty=float(difficulty))
    with staging(root, counts, overwrite, ".synth-") as tmp:
        writers: dict[str, CocoWriter] = {}
        done = 0
        pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
        try:
            for split, n in counts.items():
                (tmp / split).mkdir()
                writer = writers[split] = CocoWriter()
                jobs = ((seed, split, i, float(difficulty)) for i in range(1, n + 1))
                made = pool.imap(_make, jobs, chunksize=16) if pool else map(_make, jobs)
                for i, (png, w, h, boxes, digits) in enumerate(made, start=1):
                    (tmp / split / f"{i}.png").write_bytes(png)
                    writer.add(i, f"{i}.png", w, h, boxes, digits)
                    done += 1
                    if progress is not None:
                        progress(done)
        finally:
            if pool is not None:
                pool.terminate()
        source = layouts_mod.load().source

        def info(split: str, _writer) -> dict:
            return {
                "description": "synthetic SVHN-like house numbers (digit-reader train.synth)",
                "synth_version": SYNTH_VERSION,
                "seed": seed,
                "split": split,
                "difficulty": float(difficulty),
                "layouts_from": {k: source[k] for k in ("file", "what", "images", "sha256")},
            }

        summary["splits"] = write_splits(root, tmp, writers, info)
    return summary
