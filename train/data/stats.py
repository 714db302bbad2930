"""Layout statistics of an HW2-layout data set, beside the real SVHN-train numbers.

The reference is SVHN format-1 train, computed from its digitStruct.mat boxes and kept once, in
the layouts asset (layouts.py); it is what `digit-data synth` aims at.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from digit_reader.train.data import layouts
from digit_reader.train.data.hw2 import SPLITS, DataError, LoadReport, load_split
from digit_reader.train.data.layouts import PERCENTILES, aspects, percentiles


def svhn_train_reference() -> dict:
    """SVHN train's totals, digits per image and box-size percentiles, as split_stats words them."""
    lay = layouts.load()
    return {
        "images": lay.source["images"],
        "boxes": lay.source["boxes"],
        "digit_counts": dict(lay.count_hist),
        "box_height": [lay.height_percentiles[p] for p in PERCENTILES],
        "box_width": [lay.width_percentiles[p] for p in PERCENTILES],
        "box_aspect_wh": [lay.aspect_percentiles[p] for p in PERCENTILES],
    }


def _pct(values) -> list[float] | None:
    return percentiles(values) if len(values) else None


def split_stats(samples, report: LoadReport | None = None, labelled: bool = True) -> dict:
    boxes = np.concatenate([s.boxes for s in samples]) if samples else np.zeros((0, 4))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    sizes = [(s.width, s.height) for s in samples if s.width > 0]
    out = {
        "images": len(samples),
        "boxes": int(len(boxes)),
        "digit_counts": dict(sorted(Counter(len(s.digits) for s in samples).items()))
        if labelled
        else {},
        "digits": dict(sorted(Counter(int(d) for s in samples for d in s.digits).items())),
        "box_height": _pct(h),
        "box_width": _pct(w),
        "box_aspect_wh": _pct(aspects(w, h)),
        "image_width": _pct([s[0] for s in sizes]),
        "image_height": _pct([s[1] for s in sizes]),
    }
    if report is not None:
        out["clipped_boxes"], out["dropped_boxes"] = report.clipped_boxes, report.dropped_boxes
    return out


def dataset_stats(root, verify_images: bool = False, log=None) -> dict:
    """{split: stats} for every split present under root (json or image folder)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such directory")
    ref = _jsonable(svhn_train_reference())
    result = {"root": str(root), "splits": {}, "reference_svhn_train": ref}
    for split in SPLITS:
        if not ((root / f"{split}.json").exists() or (root / split).is_dir()):
            continue
        report = LoadReport()
        samples = load_split(root, split, report, verify_images=verify_images)
        if not verify_images and samples and samples[0].width == 0:
            samples = _with_sizes(samples)
        if log is not None:
            for line in report.lines():
                log(line)
        labelled = (root / f"{split}.json").exists()
        result["splits"][split] = split_stats(samples, report, labelled)
    if not result["splits"]:
        raise DataError(f"{root}: no split found (expected train/, valid/, test/ or their .json)")
    return result


def _with_sizes(samples):
    """Unlabelled splits have no json sizes: read them from the image headers."""
    from PIL import Image

    for s in samples:
        try:
            with Image.open(s.path) as img:
                s.width, s.height = img.size
        except OSError as e:
            raise DataError(f"{s.path}: unreadable image ({e})") from None
    return samples


def _jsonable(d: dict) -> dict:
    return {
        k: ({str(a): b for a, b in v.items()} if isinstance(v, dict) else v) for k, v in d.items()
    }


def _fmt_pct(values) -> str:
    return "-" if values is None else " / ".join(f"{v:g}" for v in values)


def format_stats(stats: dict) -> str:
    """Plain-text table: one block per split, each line beside the SVHN-train reference."""
    ref = svhn_train_reference()
    ref_total = sum(ref["digit_counts"].values())
    lines = [f"data set {stats['root']}  (reference: real SVHN train, {ref['images']:,} images)"]
    for split, st in stats["splits"].items():
        lines.append("")
        lines.append(f"[{split}] {st['images']:,} images, {st['boxes']:,} boxes")
        if st["digit_counts"]:
            lines.append("  digits per image    this set            SVHN train")
            for k in sorted(set(st["digit_counts"]) | set(ref["digit_counts"])):
                n = st["digit_counts"].get(k, 0)
                r = ref["digit_counts"].get(k, 0)
                lines.append(
                    f"    {k}               {n:>7,} {100 * n / max(st['images'], 1):6.2f} %"
                    f"   {r:>7,} {100 * r / ref_total:6.2f} %"
                )
        lines.append(f"  percentiles {'/'.join(map(str, PERCENTILES))} %")
        for key, label in (
            ("box_height", "box height px"),
            ("box_width", "box width px"),
            ("box_aspect_wh", "box width/height"),
        ):
            lines.append(f"    {label:<18}{_fmt_pct(st[key]):<36} SVHN train {_fmt_pct(ref[key])}")
        lines.append(f"    {'image width px':<18}{_fmt_pct(st['image_width'])}")
        lines.append(f"    {'image height px':<18}{_fmt_pct(st['image_height'])}")
        if st.get("clipped_boxes") or st.get("dropped_boxes"):
            lines.append(
                f"  warnings: {st['clipped_boxes']} box(es) clipped, {st['dropped_boxes']} dropped"
            )
    return "\n".join(lines)
