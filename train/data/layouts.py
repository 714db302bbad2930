"""Real SVHN digit layouts, compacted into a table the synthetic generator samples from.

The source is the SVHN format-1 train digitStruct (33,402 images) exported as
`{"N.png": {"digits": "19", "boxes_xywh_label": [[left, top, w, h, digit], ...]}}`.
It holds boxes only, no image sizes. The table keeps, for a deterministic stratified subsample
of images, the real left and top margins (the block's offset in its image) and each box
relative to the digit block's top-left corner, all in original image pixels. The full digit-count
and digit histograms are kept too, so counts are sampled with real frequencies even where the
subsample is thin (every 5- and 6-digit layout is kept), and with the full source's image and
box totals and box height, width and aspect percentiles they are the project's one copy of the
real SVHN-train reference (`digit-data stats` prints it, the tests hold synth to it).

    python -m digit_reader.train.data.layouts /path/to/train_layouts.json

rewrites train/data/assets/svhn_layouts.json (the asset synth.py samples from).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import click
import numpy as np

from digit_reader.runtime import atomic
from digit_reader.runtime.command import Command
from digit_reader.runtime.errors import UserError

ASSET = Path(__file__).parent / "assets" / "svhn_layouts.json"
SUBSAMPLE = 6000  # layouts kept; 5- and 6-digit ones are all kept on top of the proportional share
PERCENTILES = (1, 10, 50, 90, 99)


@dataclass(frozen=True)
class Layouts:
    """The asset in memory: `by_count[k]` is a list of (margins (2,), boxes (k, 4) xywh) arrays."""

    count_hist: dict[int, int]
    first_digit_hist: np.ndarray  # (10,) counts of the leftmost digit
    digit_hist: np.ndarray  # (10,) counts of every other digit
    height_percentiles: dict[int, float]  # real box percentiles (PERCENTILES), full source
    width_percentiles: dict[int, float]
    aspect_percentiles: dict[int, float]  # width / height
    by_count: dict[int, list[tuple[np.ndarray, np.ndarray]]]
    source: dict  # file, what, images, boxes, sha256, ...


def percentiles(values) -> list[float]:
    """PERCENTILES of `values`, rounded to 3 decimals."""
    values = np.asarray(values, dtype=np.float64)
    return [round(float(v), 3) for v in np.percentile(values, PERCENTILES)]


def aspects(widths: np.ndarray, heights: np.ndarray) -> np.ndarray:
    """Box width / height (a zero height counts as 1e-9), in the arrays' own precision."""
    return widths / np.maximum(heights, 1e-9)


def _block(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x0, y0 = boxes[:, 0].min(), boxes[:, 1].min()
    rel = boxes[:, :4].copy()
    rel[:, 0] -= x0
    rel[:, 1] -= y0
    return np.array([x0, y0]), rel


def build(source: Path, subsample: int = SUBSAMPLE) -> dict:
    """The asset as a JSON-ready dict, from the digitStruct export at `source`."""
    raw = source.read_bytes()
    try:
        data = json.loads(raw)
        names = sorted(data, key=lambda s: int(Path(s).stem))
        entries = [np.asarray(data[n]["boxes_xywh_label"], dtype=np.int64) for n in names]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{source}: not an SVHN layouts json ({e!r})") from None
    counts = Counter(len(e) for e in entries)
    boxes = np.concatenate(entries)
    widths, heights = boxes[:, 2], boxes[:, 3]
    first = np.bincount([e[0, 4] % 10 for e in entries], minlength=10)
    rest = np.bincount(np.concatenate([e[1:, 4] % 10 for e in entries]), minlength=10)

    # systematic sample over each count's layouts sorted by size: the kept heights follow the
    # real distribution far closer than a random draw of the same size would
    total = len(entries)
    kept: list[int] = []
    for k in sorted(counts):
        idx = [i for i, e in enumerate(entries) if len(e) == k]
        share = max(1, round(subsample * len(idx) / total))
        if k >= 5 or share >= len(idx):
            kept += idx
            continue
        idx.sort(key=lambda i: (entries[i][:, 3].mean(), i))
        pick = ((np.arange(share) + 0.5) * len(idx) / share).astype(int)
        kept += sorted(idx[j] for j in pick)
    layouts = []
    for i in kept:
        margins, rel = _block(entries[i])
        layouts.append([int(v) for v in margins] + [int(v) for v in rel.reshape(-1)])
    return {
        "source": {
            "file": source.name,
            "what": "SVHN format-1 train digitStruct.mat boxes (left, top, width, height, label)",
            "images": total,
            "boxes": len(boxes),
            "sha256": hashlib.sha256(raw).hexdigest(),
            "kept": len(layouts),
            "sampling": "per digit count, every n-th layout by mean box height; k>=5 all kept",
            "made_by": "python -m digit_reader.train.data.layouts",
        },
        "digit_count_histogram": {str(k): int(v) for k, v in sorted(counts.items())},
        "first_digit_histogram": first.tolist(),
        "other_digit_histogram": rest.tolist(),
        "box_height_percentiles": _by_percentile(heights),
        "box_width_percentiles": _by_percentile(widths),
        "box_aspect_percentiles": _by_percentile(aspects(widths, heights)),
        "fields": "left_margin top_margin then per box x y w h relative to the block's top-left",
        "layouts": layouts,
    }


def _by_percentile(values) -> dict[str, float]:
    return {str(p): v for p, v in zip(PERCENTILES, percentiles(values), strict=True)}


@lru_cache(maxsize=1)
def load(path: Path = ASSET) -> Layouts:
    asset = json.loads(Path(path).read_text(encoding="utf-8"))
    by_count: dict[int, list] = {}
    for row in asset["layouts"]:
        a = np.asarray(row, dtype=np.float64)
        boxes = a[2:].reshape(-1, 4)
        by_count.setdefault(len(boxes), []).append((a[:2], boxes))
    return Layouts(
        count_hist={int(k): int(v) for k, v in asset["digit_count_histogram"].items()},
        first_digit_hist=np.asarray(asset["first_digit_histogram"], dtype=np.float64),
        digit_hist=np.asarray(asset["other_digit_histogram"], dtype=np.float64),
        height_percentiles={int(k): v for k, v in asset["box_height_percentiles"].items()},
        width_percentiles={int(k): v for k, v in asset["box_width_percentiles"].items()},
        aspect_percentiles={int(k): v for k, v in asset["box_aspect_percentiles"].items()},
        by_count=by_count,
        source=asset["source"],
    )


@click.command(cls=Command)
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=ASSET)
@click.option("--subsample", type=int, default=SUBSAMPLE, show_default=True)
def main(source: Path, out: Path, subsample: int) -> None:
    """Rebuild the compact layout table from SVHN train boxes (train_layouts.json)."""
    asset = build(source, subsample)
    text = json.dumps(asset, separators=(",", ":"))
    # one layout per line keeps the asset diffable
    text = text.replace("],[", "],\n[")
    atomic.write_text(out, text + "\n")
    click.echo(f"{out}: {asset['source']['kept']} layouts, {len(text) / 1e3:.0f} kB", err=True)


if __name__ == "__main__":
    main()
