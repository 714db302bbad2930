"""Synthetic SVHN-like data: determinism, tight boxes, real layout statistics, HW2 output."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from digit_reader.runtime.decode import decode_number
from digit_reader.runtime.errors import UserError
from digit_reader.train.data import hw2, layouts
from digit_reader.train.data.synth import (
    SYNTH_VERSION,
    image_rng,
    render,
    sample_layout,
    synthesize,
)

# real SVHN train (its digitStruct, full source), from the layouts asset: digits per image and
# box-height percentiles in pixels
REAL = layouts.load()
REAL_COUNTS = REAL.count_hist
REAL_HEIGHTS = REAL.height_percentiles
COUNTS = {"train": 5, "valid": 3, "test": 2}


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "a"
    summary = synthesize(root, COUNTS, seed=7)
    return root, summary


def test_same_seed_same_bytes_other_seed_other_bytes(made, tmp_path):
    root, _ = made
    a = _files(root)
    assert sorted(a) == sorted(
        [f"{s}/{i}.png" for s, n in COUNTS.items() for i in range(1, n + 1)]
        + [f"{s}.json" for s in COUNTS]
    )
    synthesize(tmp_path / "b", COUNTS, seed=7)
    assert _files(tmp_path / "b") == a
    synthesize(tmp_path / "c", COUNTS, seed=8)
    c = _files(tmp_path / "c")
    assert all(c[k] != a[k] for k in a)


def test_splits_are_independent_and_parallel_runs_match(made, tmp_path):
    root, _ = made
    synthesize(tmp_path / "v", {"valid": 3}, seed=7, workers=2)
    for i in range(1, 4):
        assert (tmp_path / "v" / "valid" / f"{i}.png").read_bytes() == (
            root / "valid" / f"{i}.png"
        ).read_bytes()
    only = json.loads((tmp_path / "v" / "valid.json").read_text())
    assert only == json.loads((root / "valid.json").read_text())


def test_output_loads_cleanly_and_matches_the_render(made):
    root, summary = made
    for split, n in COUNTS.items():
        report = hw2.LoadReport()
        samples = hw2.load_split(root, split, report)
        assert (report.clipped_boxes, report.dropped_boxes, report.warnings) == (0, 0, [])
        assert [s.image_id for s in samples] == list(range(1, n + 1))
        assert summary["splits"][split]["images"] == n
        for s in samples:
            r = render(7, split, s.image_id)
            with Image.open(s.path) as im:
                assert im.mode == "RGB" and im.size == (s.width, s.height)
                assert np.array_equal(np.asarray(im), r.image)
            assert s.number == r.number
            assert np.array_equal(s.boxes, np.c_[r.boxes[:, :2], r.boxes[:, :2] + r.boxes[:, 2:]])
    info = json.loads((root / "train.json").read_text())["info"]
    assert info["synth_version"] == SYNTH_VERSION and info["seed"] == 7


def test_pycocotools_reads_it(made):
    coco_api = pytest.importorskip("pycocotools.coco", reason="pycocotools is in the train extra")
    root, _ = made
    coco = coco_api.COCO(str(root / "valid.json"))
    assert len(coco.getImgIds()) == COUNTS["valid"]
    assert sorted(coco.getCatIds()) == list(range(1, 11))


def test_boxes_are_tight_around_glyph_pixels_and_in_reading_order():
    visible = 0
    total = 0
    for i in range(1, 181):
        r = render(3, "train", i, difficulty=(1.0, 0.0, 2.0)[i % 3])
        h, w = r.image.shape[:2]
        luma = r.image.astype(np.float64) @ [0.299, 0.587, 0.114]
        for (x, y, bw, bh), (mx, my, m) in zip(r.boxes, r.masks, strict=True):
            ink = np.zeros((h, w), bool)
            ink[my : my + m.shape[0], mx : mx + m.shape[1]] = (
                m  # fails if the mask leaves the image
            )
            assert ink.sum() == m.sum()
            x0, y0, x1, y1 = int(x), int(y), int(x + bw), int(y + bh)
            assert (x0, y0, x1, y1) == (x, y, x + bw, y + bh)  # whole pixels
            assert ink.sum() == ink[y0:y1, x0:x1].sum()  # no glyph pixel outside its box
            assert ink[y0, x0:x1].any() and ink[y1 - 1, x0:x1].any()  # touches top and bottom
            assert ink[y0:y1, x0].any() and ink[y0:y1, x1 - 1].any()  # touches left and right
            inside = ink[y0:y1, x0:x1]
            if (~inside).any():
                total += 1
                lum = luma[y0:y1, x0:x1]
                visible += abs(lum[inside].mean() - lum[~inside].mean()) > 15
        xyxy = np.c_[r.boxes[:, :2], r.boxes[:, :2] + r.boxes[:, 2:]]
        assert decode_number(xyxy, np.ones(len(xyxy)), r.digits, 0.0) == r.number
    # the glyphs differ from the background inside their box: the digits can be seen
    assert visible >= 0.9 * total


def test_layout_statistics_match_real_svhn():
    # whole layouts are drawn, so the tail percentiles need many draws to settle (+-2 px at 99 %)
    n = 15000
    counts: Counter = Counter()
    heights = []
    for i in range(n):
        digits, boxes, margins = sample_layout(image_rng(11, "train", i))
        counts[len(digits)] += 1
        heights.append(boxes[:, 3])
        assert (margins >= 1).all()
    total = sum(REAL_COUNTS.values())
    for k, real in REAL_COUNTS.items():
        assert abs(counts[k] / n - real / total) < 0.015, (k, counts[k])
    got = np.percentile(np.concatenate(heights), list(REAL_HEIGHTS))
    for (p, want), g in zip(REAL_HEIGHTS.items(), got, strict=True):
        assert abs(g - want) <= max(1.0, 0.05 * want), (p, g, want)


def test_the_reference_in_the_asset_is_whole():
    """Totals, histogram and percentiles describe one source: no field was left out or edited."""
    assert sum(REAL_COUNTS.values()) == REAL.source["images"]
    assert sum(k * n for k, n in REAL_COUNTS.items()) == REAL.source["boxes"]
    assert REAL.first_digit_hist.sum() == REAL.source["images"]
    assert REAL.first_digit_hist.sum() + REAL.digit_hist.sum() == REAL.source["boxes"]
    for table in (REAL.height_percentiles, REAL.width_percentiles, REAL.aspect_percentiles):
        assert list(table) == list(layouts.PERCENTILES)
        assert list(table.values()) == sorted(table.values())
    # a box's aspect is its width over its height, so the medians must roughly agree
    median_width = REAL.aspect_percentiles[50] * REAL.height_percentiles[50]
    assert abs(median_width - REAL.width_percentiles[50]) < 2


def test_rendered_boxes_keep_the_real_heights_and_counts():
    """The drawn glyphs' tight boxes have their layout's heights, in the same original pixels."""
    ratios, counts = [], Counter()
    for i in range(1, 301):
        _, boxes, _ = sample_layout(image_rng(5, "valid", i))
        r = render(5, "valid", i)
        counts[len(r.digits)] += 1
        ratios.append(r.boxes[:, 3] / boxes[:, 3])
    q = np.concatenate(ratios)
    assert abs(np.median(q) - 1.0) < 0.02 and abs(q.mean() - 1.0) < 0.03
    assert np.percentile(q, 5) > 0.85 and np.percentile(q, 95) < 1.15
    assert abs(counts[2] / 300 - REAL_COUNTS[2] / REAL.source["images"]) < 0.07


def test_interrupted_run_leaves_nothing_half_written(tmp_path):
    def stop(n):
        if n == 3:
            raise KeyboardInterrupt

    root = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        synthesize(root, {"train": 2, "valid": 4}, seed=1, progress=stop)
    assert list(root.iterdir()) == []


def test_refuses_existing_output_unless_overwrite_and_bad_arguments(tmp_path):
    seen = []
    synthesize(tmp_path, {"test": 2}, seed=1, progress=seen.append)
    assert seen == [1, 2]
    with pytest.raises(UserError, match="already exists"):
        synthesize(tmp_path, {"test": 1}, seed=1)
    synthesize(tmp_path, {"test": 1}, seed=2, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "test").iterdir()) == ["1.png"]
    assert len(json.loads((tmp_path / "test.json").read_text())["images"]) == 1
    for counts, seed in (({"extra": 1}, 1), ({"train": -1}, 1), ({"train": 1}, -3), ({}, 1.5)):
        with pytest.raises(UserError):
            synthesize(tmp_path / "x", counts, seed=seed)


def test_layout_table_rebuilds_from_the_digitstruct_export(tmp_path):
    src = tmp_path / "train_layouts.json"
    digit_counts = [1, 2, 2, 3, 2, 5, 1, 2, 3, 2]
    data = {
        f"{i}.png": {
            "digits": "1" * k,
            "boxes_xywh_label": [[10 + 9 * j, 5 + i % 3, 8, 12 + i, 1] for j in range(k)],
        }
        for i, k in enumerate(digit_counts, start=1)
    }
    src.write_text(json.dumps(data))
    asset = layouts.build(src, subsample=5)
    assert asset["source"]["images"] == 10 and asset["source"]["file"] == src.name
    assert asset["source"]["boxes"] == 23
    assert asset["digit_count_histogram"] == {"1": 2, "2": 5, "3": 2, "5": 1}
    heights = [12 + i for i, k in enumerate(digit_counts, start=1) for _ in range(k)]
    want = np.percentile(heights, layouts.PERCENTILES)
    assert list(asset["box_height_percentiles"].values()) == [round(v, 3) for v in want]
    assert asset["box_width_percentiles"] == {str(p): 8.0 for p in layouts.PERCENTILES}
    want = np.percentile(8 / np.array(heights), layouts.PERCENTILES)
    assert list(asset["box_aspect_percentiles"].values()) == [round(v, 3) for v in want]
    rows = asset["layouts"]
    assert any(len(r) == 2 + 5 * 4 for r in rows)  # the rare 5-digit layout is always kept
    assert all(r[:4] == [10, r[1], 0, 0] for r in rows)  # margins, then boxes from the block
    out = tmp_path / "asset.json"
    out.write_text(json.dumps(asset))
    table = layouts.load(out)
    assert sum(len(v) for v in table.by_count.values()) == len(rows)
    assert table.width_percentiles == {p: 8.0 for p in layouts.PERCENTILES}
    src.write_text("{not json")
    with pytest.raises(UserError, match="train_layouts.json"):
        layouts.build(src)
