"""HW2 layout reader: good data round-trips, every kind of bad input is named precisely."""

import json

import numpy as np
import pytest
from PIL import Image

from digit_reader.train.data.hw2 import (
    CATEGORIES,
    CocoWriter,
    DataError,
    LoadReport,
    clip_box_xywh,
    load_split,
    staging,
    write_splits,
)


def _png(path, w=30, h=20):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path)


def _dataset(root, images=None, annotations=None, **extra):
    """root/train/1.png, 2.png (30x20) and train.json; images/annotations override the json."""
    _png(root / "train" / "1.png")
    _png(root / "train" / "2.png")
    coco = {
        "images": images
        if images is not None
        else [
            {"id": 1, "file_name": "1.png", "width": 30, "height": 20},
            {"id": 2, "file_name": "2.png", "width": 30, "height": 20},
        ],
        "annotations": annotations
        if annotations is not None
        else [
            {"id": 1, "image_id": 1, "bbox": [12.5, 2, 5, 10], "category_id": 10},
            {"id": 2, "image_id": 1, "bbox": [2, 3, 6, 10], "category_id": 2},
            {"id": 3, "image_id": 2, "bbox": [4, 4, 4, 4], "category_id": 8},
        ],
        "categories": CATEGORIES,
        **extra,
    }
    (root / "train.json").write_text(json.dumps(coco))
    return root


def _error(root, split="train", **kw) -> str:
    with pytest.raises(DataError) as e:
        load_split(root, split, **kw)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_reads_boxes_digits_and_number(tmp_path):
    samples = load_split(_dataset(tmp_path), "train")
    assert [s.image_id for s in samples] == [1, 2]
    s = samples[0]
    assert s.path == tmp_path / "train" / "1.png" and (s.width, s.height) == (30, 20)
    assert s.digits.tolist() == [9, 1]
    np.testing.assert_allclose(s.boxes, [[12.5, 2, 17.5, 12], [2, 3, 8, 13]])
    assert s.number == "19"  # left to right, whatever the annotation order
    assert samples[1].number == "7"


def test_coco_writer_round_trip(tmp_path):
    _png(tmp_path / "valid" / "1.png")
    writer = CocoWriter()
    writer.add(1, "1.png", 30, 20, [(1, 2, 3, 4), (5, 2, 3.5, 4)], [0, 9])
    writer.save(tmp_path / "valid.json")
    (s,) = load_split(tmp_path, "valid")
    assert s.digits.tolist() == [0, 9] and s.number == "09"
    np.testing.assert_allclose(s.boxes, [[1, 2, 4, 6], [5, 2, 8.5, 6]])
    saved = json.loads((tmp_path / "valid.json").read_text())
    assert [a["category_id"] for a in saved["annotations"]] == [1, 10]
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temporary file


def test_unlabelled_test_split_in_natural_order(tmp_path):
    for n in (10, 2, 1):
        _png(tmp_path / "test" / f"{n}.png", 7, 5)
    samples = load_split(tmp_path, "test")
    assert [s.image_id for s in samples] == [1, 2, 10]
    assert all(len(s.digits) == 0 for s in samples)
    assert [(s.width, s.height) for s in load_split(tmp_path, "test", verify_images=True)] == [
        (7, 5)
    ] * 3
    _png(tmp_path / "test" / "abc.png")
    assert "abc.png: HW2 test images are named N.png" in _error(tmp_path, "test")


def test_missing_split_or_json(tmp_path):
    assert "neither valid.json nor valid/ exists" in _error(tmp_path, "valid")
    _png(tmp_path / "valid" / "1.png")
    message = _error(tmp_path, "valid")
    assert message.startswith(f"{tmp_path / 'valid.json'}: no such file (valid/ needs its labels")


def test_malformed_json(tmp_path):
    (tmp_path / "train.json").write_text('{"images": [')
    assert _error(tmp_path).startswith(f"{tmp_path / 'train.json'}: not valid JSON")
    (tmp_path / "train.json").write_bytes(b"\xff\xfe{}")
    assert "not UTF-8 text" in _error(tmp_path)
    (tmp_path / "train.json").write_text("[1, 2]")
    assert "expected a COCO object with an 'images' list" in _error(tmp_path)
    (tmp_path / "train.json").write_text('{"images": [], "annotations": {}}')
    assert "'annotations' must be a list" in _error(tmp_path)


@pytest.mark.parametrize(
    "image, expect",
    [
        (
            {"file_name": "1.png", "width": 30, "height": 20},
            r"images[0] is malformed (KeyError('id'))",
        ),
        ({"id": "1", "file_name": "1.png", "width": 30, "height": 20}, "images[0] is malformed"),
        ({"id": 1.5, "file_name": "1.png", "width": 30, "height": 20}, "images[0] is malformed"),
        ("1.png", "images[0] is malformed"),
        ({"id": 1, "file_name": "../1.png", "width": 30, "height": 20}, "not a plain file name"),
        ({"id": 1, "file_name": 7, "width": 30, "height": 20}, "not a plain file name"),
        ({"id": 1, "file_name": "1.png", "width": 0, "height": 20}, "has size 0x20"),
        ({"id": 1, "file_name": "9.png", "width": 30, "height": 20}, "points at missing"),
    ],
)
def test_bad_image_entry(tmp_path, image, expect):
    message = _error(_dataset(tmp_path, images=[image], annotations=[]))
    assert message.startswith(f"{tmp_path / 'train.json'}: images[0]")
    assert expect in message


def test_repeated_image_id(tmp_path):
    im = {"id": 1, "file_name": "1.png", "width": 30, "height": 20}
    assert "images[1] repeats image id 1" in _error(_dataset(tmp_path, images=[im, im]))


@pytest.mark.parametrize(
    "ann, expect",
    [
        ({"image_id": 1, "category_id": 1}, "annotations[0] is malformed (KeyError('bbox'))"),
        ({"image_id": 1, "bbox": [1, 2, 3], "category_id": 1}, "annotations[0] is malformed"),
        ({"image_id": 1, "bbox": [1, 2, "3", 4], "category_id": 1}, "annotations[0] is malformed"),
        ({"image_id": 1, "bbox": [1, 2, float("nan"), 4], "category_id": 1}, "is not a finite"),
        ({"image_id": 1, "bbox": [1, 2, 3, 4], "category_id": 2.5}, "annotations[0] is malformed"),
        ({"image_id": 7, "bbox": [1, 2, 3, 4], "category_id": 1}, "refers to unknown image id 7"),
        ({"image_id": 1, "bbox": [1, 2, 3, 4], "category_id": 0}, "has category_id 0; expected"),
        ({"image_id": 1, "bbox": [1, 2, 3, 4], "category_id": 11}, "has category_id 11; expected"),
    ],
)
def test_bad_annotation(tmp_path, ann, expect):
    message = _error(_dataset(tmp_path, annotations=[ann]))
    assert message.startswith(f"{tmp_path / 'train.json'}: annotations[0]")
    assert expect in message


def test_categories_numbered_another_way(tmp_path):
    svhn_style = [{"id": 10, "name": "0"}] + [{"id": d, "name": str(d)} for d in range(1, 10)]
    message = _error(_dataset(tmp_path, categories=svhn_style))
    assert "categories[0] maps id 10 to '0'; HW2 uses category_id = digit + 1" in message


def test_boxes_outside_are_clipped_and_empty_ones_dropped(tmp_path):
    anns = [
        {"image_id": 1, "bbox": [-3, 2, 8, 30], "category_id": 4},  # clipped to 0..5, 2..20
        {"image_id": 1, "bbox": [40, 2, 5, 5], "category_id": 5},  # wholly outside: dropped
        {"image_id": 1, "bbox": [10, 2, 0, 5], "category_id": 6},  # zero width: dropped
        {"image_id": 1, "bbox": [10, 2, 5, -5], "category_id": 6},  # negative height: dropped
        {"image_id": 2, "bbox": [29.5, 2, 5, 5], "category_id": 7},  # 0.5 px left: dropped
    ]
    report = LoadReport()
    samples = load_split(_dataset(tmp_path, annotations=anns), "train", report)
    assert (report.clipped_boxes, report.dropped_boxes) == (1, 4)
    np.testing.assert_allclose(samples[0].boxes, [[0, 2, 5, 20]])
    assert samples[0].digits.tolist() == [3] and len(samples[1].digits) == 0
    assert "annotations[1] (image 1) box [40.0, 2.0, 5.0, 5.0] has no area" in report.warnings[1]
    assert report.lines()[-1] == (
        "warning: 1 box(es) clipped to their image, 4 dropped for having no area inside it"
    )
    assert LoadReport().lines() == []


@pytest.mark.parametrize(
    "xywh, expect",
    [
        ((2, 3, 4, 5), (2, 3, 6, 8)),  # inside: unchanged, as x1 y1 x2 y2
        ((-3, 2, 8, 30), (0, 2, 5, 20)),  # clipped on two sides
        ((9, 0, 1, 20), (9, 0, 10, 20)),  # exactly one pixel left
        ((9.5, 0, 5, 5), None),  # half a pixel left
        ((4, 4, 0, 5), None),  # no width
        ((4, 4, 3, -2), None),  # negative height
        ((-5, 4, 3, 3), None),  # wholly outside
    ],
)
def test_clip_box_xywh(xywh, expect):
    assert clip_box_xywh(*xywh, 10, 20) == expect


def test_warnings_are_capped_but_counted(tmp_path):
    anns = [{"image_id": 1, "bbox": [50, 2, 5, 5], "category_id": 1}] * 30
    report = LoadReport()
    load_split(_dataset(tmp_path, annotations=anns), "train", report)
    assert report.dropped_boxes == 30 and len(report.warnings) == 20


def test_verify_images_catches_unreadable_and_wrong_size(tmp_path):
    root = _dataset(tmp_path)
    assert len(load_split(root, "train", verify_images=True)) == 2
    (root / "train" / "2.png").write_bytes(b"not a png")
    assert len(load_split(root, "train")) == 2  # not opened without verify
    message = _error(root, verify_images=True)
    assert message.startswith(
        f"{root / 'train.json'}: images[1] (id 2): {root / 'train' / '2.png'}"
    )
    assert "not an image file PIL can read" in message
    (root / "train" / "2.png").write_bytes(b"")
    assert "empty file (0 bytes)" in _error(root, verify_images=True)
    _png(root / "train" / "2.png", 31, 20)
    assert "2.png is 31x20, the json says 30x20" in _error(root, verify_images=True)


def test_write_splits_replaces_a_split_from_staging_json_last(tmp_path):
    root = tmp_path / "root"
    _png(root / "valid" / "9.png")
    (root / "valid.json").write_text("{}")
    with staging(root, ["valid"], overwrite=True, prefix=".t-") as tmp:
        _png(tmp / "valid" / "1.png")
        writer = CocoWriter()
        writer.add(1, "1.png", 30, 20, [(1, 2, 3, 4), (5, 2, 3, 4)], [1, 2])
        summary = write_splits(
            root, tmp, {"valid": writer}, lambda split, w: {"split": split, "n": len(w.images)}
        )
    assert summary == {"valid": {"images": 1, "boxes": 2, "digit_counts": {2: 1}}}
    assert sorted(p.name for p in root.iterdir()) == ["valid", "valid.json"]  # staging gone
    assert [p.name for p in (root / "valid").iterdir()] == ["1.png"]
    coco = json.loads((root / "valid.json").read_text())
    assert list(coco) == ["info", "images", "annotations", "categories"]
    assert coco["info"] == {"split": "valid", "n": 1}
    assert load_split(root, "valid")[0].digits.tolist() == [1, 2]


def test_staging_refuses_existing_splits_and_a_file_as_root(tmp_path):
    (tmp_path / "test.json").write_text("{}")
    with pytest.raises(DataError, match="test.json already exists"):
        with staging(tmp_path, ["train", "test"], overwrite=False, prefix=".t-"):
            pass
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="file: exists and is not a directory"):
        with staging(tmp_path / "file", ["train"], overwrite=False, prefix=".t-"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "test.json"]
