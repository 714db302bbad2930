"""SVHN format 1 reader and converter on digitStruct.mat files laid out the way MATLAB v7.3 does."""

import json

import h5py
import numpy as np
import pytest
from PIL import Image

from digit_reader.train.data.hw2 import DataError, load_split
from digit_reader.train.data.svhn_mat import convert_svhn, read_digitstruct


def _png(path, w, h, value):
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def test_read_digitstruct_single_and_multi_digit_and_label_10(tmp_path, write_digitstruct):
    entries = [
        ("1.png", [(5, 6, 7, 8, 10)]),  # k == 1 stored directly, label 10 = digit 0
        ("2.png", [(1, 2, 3, 4, 1), (4.5, 2, 3, 4, 9), (8, 2, 3, 4, 10)]),  # k > 1 references
        ("some-name_10.png", [(0, 0, 1, 1, 5), (1, 0, 1, 1, 6)]),
    ]
    write_digitstruct(tmp_path / "digitStruct.mat", entries)
    assert (tmp_path / "digitStruct.mat").read_bytes()[:10] == b"MATLAB 7.3"  # as MATLAB writes it
    got = read_digitstruct(tmp_path / "digitStruct.mat", progress=False)
    assert [e.name for e in got] == ["1.png", "2.png", "some-name_10.png"]
    assert [e.index for e in got] == [1, 2, 3]
    assert got[0].digits.tolist() == [0]
    assert got[0].boxes_xywh.tolist() == [[5, 6, 7, 8]]
    assert got[1].digits.tolist() == [1, 9, 0]
    assert got[1].boxes_xywh.tolist() == [[1, 2, 3, 4], [4.5, 2, 3, 4], [8, 2, 3, 4]]
    assert got[2].digits.tolist() == [5, 6]


def test_convert_splits_renumbers_and_keeps_boxes(tmp_path, make_svhn):
    truth = make_svhn(tmp_path / "svhn", n_train=40, n_test=7)
    report = convert_svhn(
        tmp_path / "svhn", tmp_path / "out", seed=3, valid_fraction=0.25, progress=False
    )
    assert report.found == ["train", "test"]
    sizes = {s: v["images"] for s, v in report.splits.items()}
    assert sizes == {"train": 30, "valid": 10, "test": 7}
    assert report.linked + report.copied == 47
    seen = []
    for split in ("train", "valid", "test"):
        samples = load_split(tmp_path / "out", split, verify_images=True)
        coco = json.loads((tmp_path / "out" / f"{split}.json").read_text())
        sources = {im["id"]: im["source"] for im in coco["images"]}
        assert sorted(s.image_id for s in samples) == list(range(1, len(samples) + 1))
        for s in samples:
            assert s.path.name == f"{s.image_id}.png"
            digits, boxes, wh = truth[sources[s.image_id]]
            assert s.digits.tolist() == digits
            assert (s.width, s.height) == wh
            xyxy = [[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in boxes]
            np.testing.assert_allclose(s.boxes, xyxy)
            assert s.path.read_bytes() == (tmp_path / "svhn" / sources[s.image_id]).read_bytes()
            seen.append(sources[s.image_id])
    assert sorted(seen) == sorted(truth)
    assert all(v.startswith("test/") for v in sources.values())  # the last split read is test


def test_convert_is_deterministic_by_seed(tmp_path, make_svhn):
    make_svhn(tmp_path / "svhn", n_train=30, n_test=2)

    def run(seed, name):
        out = tmp_path / name
        convert_svhn(tmp_path / "svhn", out, seed=seed, valid_fraction=0.3, progress=False)
        return {s: (out / f"{s}.json").read_bytes() for s in ("train", "valid", "test")}

    a, b, c = run(0, "a"), run(0, "b"), run(1, "c")
    assert a == b
    images = {k: {s: json.loads(v[s])["images"] for s in v} for k, v in (("a", a), ("c", c))}
    assert images["a"]["valid"] != images["c"]["valid"]
    assert images["a"]["test"] == images["c"]["test"]


def test_convert_default_fraction_and_extra_folded_into_train(tmp_path, make_svhn):
    make_svhn(tmp_path / "svhn", n_train=50, n_test=0, extra=20)
    report = convert_svhn(tmp_path / "svhn", tmp_path / "out", progress=False)
    assert report.found == ["train", "extra"]
    assert report.splits["valid"]["images"] == round(70 * 3340 / 33402)
    assert report.splits["train"]["images"] == 70 - round(70 * 3340 / 33402)
    assert "test" not in report.splits and not (tmp_path / "out" / "test.json").exists()
    sources = {
        im["source"].split("/")[0]
        for s in ("train", "valid")
        for im in json.loads((tmp_path / "out" / f"{s}.json").read_text())["images"]
    }
    assert sources == {"train", "extra"}


def test_convert_clips_and_drops_boxes(tmp_path, write_digitstruct):
    d = tmp_path / "svhn" / "test"
    d.mkdir(parents=True)
    _png(d / "1.png", 20, 10, 0)
    write_digitstruct(d / "digitStruct.mat", [("1.png", [(-2, 1, 8, 20, 3), (30, 1, 5, 5, 4)])])
    report = convert_svhn(tmp_path / "svhn", tmp_path / "out", progress=False)
    assert (report.clipped_boxes, report.dropped_boxes) == (1, 1)
    assert "digitStruct(1) (1.png)" in report.warnings[0]
    (s,) = load_split(tmp_path / "out", "test")
    assert s.boxes.tolist() == [[0, 1, 6, 10]] and s.digits.tolist() == [3]


def test_convert_refuses_existing_output(tmp_path, make_svhn):
    make_svhn(tmp_path / "svhn", n_train=0, n_test=2)
    convert_svhn(tmp_path / "svhn", tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="already exists"):
        convert_svhn(tmp_path / "svhn", tmp_path / "out", progress=False)
    convert_svhn(tmp_path / "svhn", tmp_path / "out", progress=False, overwrite=True)


def test_no_sources_found(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="found none of train/, test/, extra/"):
        convert_svhn(tmp_path, tmp_path / "out", progress=False)
    (tmp_path / "train" / "digitStruct.mat").write_bytes(b"")
    with pytest.raises(DataError, match="give its parent"):
        convert_svhn(tmp_path / "train", tmp_path / "out", progress=False)


def _one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message
    return message


def _drop_top(f, refs):
    del f[f["digitStruct/bbox"][1, 0]]["top"]


def _label_11(f, refs):
    f[f["digitStruct/bbox"][0, 0]]["label"][0, 0] = 11.0


def _short_width(f, refs):
    group = f[f["digitStruct/bbox"][1, 0]]
    data = group["width"][()]
    del group["width"]
    group.create_dataset("width", data=data[:1], dtype=h5py.ref_dtype)


def _name_is_double(f, refs):
    del f["digitStruct/name"]
    ds = refs.create_dataset("zz", data=np.array([[1.5]]))
    names = np.array([[ds.ref], [ds.ref]], dtype=h5py.ref_dtype)
    f["digitStruct"].create_dataset("name", data=names, dtype=h5py.ref_dtype)


def _inner_ref_not_scalar(f, refs):
    pair = refs.create_dataset("zz", data=np.array([[1.0, 2.0]]))
    f[f["digitStruct/bbox"][1, 0]]["left"][1, 0] = pair.ref


def _dangling_ref(f, refs):
    target = f[f[f["digitStruct/bbox"][1, 0]]["top"][0, 0]]
    del refs[target.name.rsplit("/", 1)[1]]


@pytest.mark.parametrize(
    "corrupt, expect",
    [
        (_drop_top, r"digitStruct\(2\) \(b.png\): bbox has no field 'top'"),
        (_label_11, r"digitStruct\(1\) \(a.png\): labels \[11.0\] outside 1..10"),
        (
            _short_width,
            r"digitStruct\(2\) \(b.png\): bbox field 'width' has 1 values but 'label' has 2",
        ),
        (_name_is_double, r"digitStruct\(1\) \(\?\): name is stored as float64"),
        (_inner_ref_not_scalar, r"digitStruct\(2\) \(b.png\): bbox field 'left' item 2 is not a"),
        (_dangling_ref, r"digitStruct\(2\) \(b.png\): .*object"),
    ],
)
def test_malformed_entry_names_file_and_index(tmp_path, corrupt, expect, write_digitstruct):
    path = tmp_path / "digitStruct.mat"
    entries = [("a.png", [(1, 1, 2, 2, 1)]), ("b.png", [(1, 1, 2, 2, 1), (3, 1, 2, 2, 2)])]
    write_digitstruct(path, entries, corrupt)
    with pytest.raises(DataError) as e:
        read_digitstruct(path, progress=False)
    assert _one_line(e).startswith(f"{path}: ")
    assert e.match(expect)


def test_not_hdf5_and_missing_struct(tmp_path):
    path = tmp_path / "digitStruct.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
    with pytest.raises(DataError, match="not a MATLAB v7.3"):
        read_digitstruct(path, progress=False)
    with h5py.File(path, "w") as f:
        f.create_group("other")
    with pytest.raises(DataError, match="no digitStruct/name"):
        read_digitstruct(path, progress=False)


def test_missing_and_corrupt_image_name_the_entry(tmp_path, write_digitstruct):
    d = tmp_path / "svhn" / "train"
    d.mkdir(parents=True)
    noise = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(noise).save(d / "1.png")
    entries = [("1.png", [(1, 1, 5, 5, 1)]), ("2.png", [(1, 1, 5, 5, 1)])]
    write_digitstruct(d / "digitStruct.mat", entries)
    with pytest.raises(DataError) as e:
        convert_svhn(tmp_path / "svhn", tmp_path / "out", progress=False)
    assert "digitStruct(2) (2.png): image" in _one_line(e) and "does not exist" in str(e.value)
    (d / "2.png").write_bytes((d / "1.png").read_bytes()[:3000])
    with pytest.raises(DataError, match=r"digitStruct\(2\) \(2.png\): .* truncated or corrupt"):
        convert_svhn(tmp_path / "svhn", tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "train.json").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # no half-written output left
