"""SVHN format 1 (Stanford train/test/extra .tar.gz, digitStruct.mat) to the HW2 layout.

digitStruct.mat is MATLAB v7.3, i.e. HDF5: `digitStruct/name` and `digitStruct/bbox` are Nx1
arrays of object references. A name points at a uint16 (UTF-16) character column; a bbox points
at a group with `height`, `label`, `left`, `top`, `width`, each (k, 1): the numbers themselves
when k == 1, else references to 1x1 datasets. Label 10 means digit 0.

h5py's high-level `f[ref]` costs tens of microseconds per reference and a real file holds about
half a million of them, so the reader uses the low-level API (h5r.dereference, h5d.read).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digit_reader.train.data.hw2 import CocoWriter, DataError, LoadReport, staging, write_splits

FIELDS = ("left", "top", "width", "height", "label")
# HW2 split 30,062 train / 3,340 valid of SVHN's 33,402 train images.
VALID_FRACTION = 3340 / 33402
SOURCES = ("train", "test", "extra")


@dataclass
class MatEntry:
    index: int  # 1-based, as MATLAB's digitStruct(index)
    name: str
    boxes_xywh: np.ndarray  # (k, 4) float64 left, top, width, height
    digits: np.ndarray  # (k,) int64 0..9


def _h5py():
    try:
        import h5py
    except ImportError:
        raise DataError(
            "reading digitStruct.mat needs h5py: pip install 'digit-reader[train]'"
        ) from None
    return h5py


def _read(h5py, dsid, dtype=None) -> np.ndarray:
    arr = np.empty(dsid.shape, dtype=dsid.dtype if dtype is None else dtype)
    if arr.size:
        dsid.read(h5py.h5s.ALL, h5py.h5s.ALL, arr)
    return arr


def _name(h5py, fid, ref) -> str:
    obj = h5py.h5r.dereference(ref, fid)
    if not isinstance(obj, h5py.h5d.DatasetID):
        raise ValueError("name reference does not point at a dataset")
    if obj.get_type().get_class() != h5py.h5t.INTEGER:
        raise ValueError(f"name is stored as {obj.dtype}, expected uint16 characters")
    chars = _read(h5py, obj, "<u2")
    return chars.ravel(order="F").tobytes().decode("utf-16-le")


def _numbers(h5py, fid, gid, key: str) -> np.ndarray:
    """One bbox field as float64: the values themselves (k == 1) or references to 1x1 values."""
    try:
        dsid = h5py.h5d.open(gid, key.encode())
    except KeyError:
        raise ValueError(f"bbox has no field {key!r}") from None
    kind = dsid.get_type().get_class()
    if kind in (h5py.h5t.INTEGER, h5py.h5t.FLOAT):
        return _read(h5py, dsid, np.float64).ravel()
    if kind != h5py.h5t.REFERENCE:
        raise ValueError(f"bbox field {key!r} is stored as {dsid.dtype}, expected numbers")
    refs = _read(h5py, dsid).ravel()
    out = np.empty(len(refs), np.float64)
    one = h5py.h5s.create_simple((1,))
    for j, ref in enumerate(refs):
        # HDF5 itself refuses a dataset of more than one value or of a non-numeric type here.
        try:
            h5py.h5r.dereference(ref, fid).read(one, h5py.h5s.ALL, out[j : j + 1])
        except (OSError, AttributeError, TypeError) as e:
            raise ValueError(
                f"bbox field {key!r} item {j + 1} is not a single number ({e})"
            ) from None
    return out


def _bbox(h5py, fid, ref) -> tuple[np.ndarray, np.ndarray]:
    gid = h5py.h5r.dereference(ref, fid)
    if not isinstance(gid, h5py.h5g.GroupID):
        raise ValueError("bbox reference does not point at a group")
    cols = {key: _numbers(h5py, fid, gid, key) for key in FIELDS}
    k = len(cols["label"])
    if k == 0:
        raise ValueError("bbox has no digits")
    for key, col in cols.items():
        if len(col) != k:
            raise ValueError(f"bbox field {key!r} has {len(col)} values but 'label' has {k}")
        if not np.isfinite(col).all():
            raise ValueError(f"bbox field {key!r} holds a non-finite value {col.tolist()}")
    labels = cols["label"]
    if not np.isin(labels, np.arange(1, 11)).all():
        raise ValueError(f"labels {labels.tolist()} outside 1..10 (10 = digit 0)")
    boxes = np.stack([cols[key] for key in FIELDS[:4]], axis=1)
    return boxes, (labels.astype(np.int64) % 10)


def _small_metadata_cache(fid) -> None:
    """Every entry opens ~20 tiny objects once; HDF5's default 32 MB adaptive metadata cache
    only grows on that pattern (hundreds of MB for SVHN train), so cap it at 4 MB."""
    config = fid.get_mdc_config()
    config.set_initial_size = True
    config.initial_size, config.min_size, config.max_size = 1 << 20, 1 << 20, 4 << 20
    fid.set_mdc_config(config)


def read_digitstruct(path, progress: bool = True) -> list[MatEntry]:
    """All entries of one digitStruct.mat, in file order (index 1 = 1.png in Stanford's files)."""
    h5py = _h5py()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not a MATLAB v7.3 (HDF5) file ({e})") from None
    with f:
        try:
            names = f["digitStruct/name"][()].ravel()
            bboxes = f["digitStruct/bbox"][()].ravel()
        except (KeyError, TypeError, AttributeError) as e:
            raise DataError(f"{path}: no digitStruct/name and digitStruct/bbox ({e})") from None
        if names.dtype.kind != "O" or bboxes.dtype.kind != "O":
            raise DataError(f"{path}: digitStruct/name and /bbox must hold object references")
        if len(names) != len(bboxes):
            raise DataError(f"{path}: digitStruct has {len(names)} names but {len(bboxes)} bboxes")
        fid = f.id
        _small_metadata_cache(fid)
        out = []
        for i, (name_ref, bbox_ref) in enumerate(
            _bar(zip(names, bboxes, strict=True), len(names), f"read {path}", progress), start=1
        ):
            name = "?"
            try:
                name = _name(h5py, fid, name_ref)
                boxes, digits = _bbox(h5py, fid, bbox_ref)
            except (ValueError, KeyError, TypeError, OSError) as e:
                raise DataError(f"{path}: digitStruct({i}) ({name}): {e}") from None
            out.append(MatEntry(i, name, boxes, digits))
    return out


def _bar(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="img", file=sys.stderr, leave=False)


def find_sources(src_dir) -> dict[str, Path]:
    """{source: dir} for each of train/, test/, extra/ under src_dir holding a digitStruct.mat."""
    src = Path(src_dir)
    if not src.is_dir():
        raise DataError(f"{src}: no such directory")
    found = {s: src / s for s in SOURCES if (src / s / "digitStruct.mat").is_file()}
    if not found:
        hint = (
            " (it holds a digitStruct.mat itself: give its parent)"
            if (src / "digitStruct.mat").is_file()
            else ""
        )
        raise DataError(
            f"{src}: found none of train/, test/, extra/ with a digitStruct.mat inside; give "
            f"the directory where SVHN's train/test/extra .tar.gz were extracted{hint}"
        )
    return found


def _image_size(path: Path) -> tuple[int, int]:
    """Size from the header, after a structural check (PNG chunk CRCs) without a full decode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            size = img.size
            img.verify()
        return size
    except FileNotFoundError:
        raise ValueError(f"image {path} does not exist") from None
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ValueError(f"{path} is truncated or corrupt ({e})") from None


def _place(src: Path, dst: Path, report: LoadReport) -> None:
    try:
        os.link(src, dst)
        report.linked += 1
    except OSError:
        shutil.copyfile(src, dst)
        report.copied += 1


def convert_svhn(
    src_dir,
    out_root,
    seed: int = 0,
    valid_fraction: float = VALID_FRACTION,
    *,
    overwrite: bool = False,
    progress: bool = True,
    log=None,
) -> LoadReport:
    """Write out_root/{train,valid,test}/1..N.png and {split}.json from extracted SVHN format 1.

    SVHN train (plus extra, when present) is split into train/valid by a seeded permutation;
    SVHN test becomes test with its test.json so it can be scored. Each json's images carry
    `source` (e.g. "train/17.png"). Boxes are clipped to the image, boxes with no area left are
    dropped (counted in the report). Images are hard-linked when possible, else copied.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if not 0.0 <= float(valid_fraction) < 1.0:
        raise DataError(f"valid fraction must be in [0, 1), got {valid_fraction}")
    if int(seed) < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed}")
    found = find_sources(src_dir)
    report = LoadReport(found=list(found))
    missing = [s for s in SOURCES if s not in found]
    log(
        f"found {', '.join(f'{s}/' for s in found)} in {src_dir}"
        + (f"; not found: {', '.join(f'{s}/' for s in missing)}" if missing else "")
    )
    out = Path(out_root)
    plan = _plan(found, seed, valid_fraction, progress)

    with staging(out, plan, overwrite, ".convert-") as tmp:
        writers = {}
        for split, items in plan.items():
            writers[split] = _write_split(tmp / split, split, items, report, progress)

        def info(split: str, writer: CocoWriter) -> dict:
            return {
                "description": "SVHN format 1 converted by digit-reader (digit-data convert)",
                "split": split,
                "seed": int(seed),
                "valid_fraction": float(valid_fraction),
                "sources": sorted({im["source"].split("/")[0] for im in writer.images}),
            }

        report.splits = write_splits(out, tmp, writers, info)
    return report


_Plan = dict[str, list[tuple[str, Path, MatEntry]]]


def _plan(found: dict[str, Path], seed, valid_fraction, progress: bool) -> _Plan:
    """{split: [(source, source dir, entry)]}: SVHN train and extra pooled and split into
    train/valid by one seeded permutation (so a seed always makes the same split), SVHN test
    kept whole as test. Every digitStruct.mat is read here, before anything is written."""
    plan: _Plan = {}
    pool = []
    for source in ("train", "extra"):
        if source in found:
            entries = read_digitstruct(found[source] / "digitStruct.mat", progress)
            pool += [(source, found[source], e) for e in entries]
    if pool:
        order = np.random.default_rng(int(seed)).permutation(len(pool))
        n_valid = round(len(pool) * float(valid_fraction))
        valid_idx = set(order[:n_valid].tolist())
        plan["train"] = [p for i, p in enumerate(pool) if i not in valid_idx]
        plan["valid"] = [p for i, p in enumerate(pool) if i in valid_idx]
    if "test" in found:
        entries = read_digitstruct(found["test"] / "digitStruct.mat", progress)
        plan["test"] = [("test", found["test"], e) for e in entries]
    return plan


def _write_split(folder: Path, split: str, items, report: LoadReport, progress: bool):
    """Make `folder` and place each planned image in it as 1..N (its original suffix); the
    returned CocoWriter holds their clipped boxes and each image's `source`."""
    folder.mkdir()
    writer = CocoWriter()
    for new_id, (source, src, entry) in enumerate(
        _bar(items, len(items), f"write {split}", progress), start=1
    ):
        mat = src / "digitStruct.mat"
        image = src / entry.name
        w, h = _checked_size(mat, entry, image)
        boxes, digits = _clip(entry, w, h, mat, report)
        file_name = f"{new_id}{image.suffix.lower()}"
        _place(image, folder / file_name, report)
        writer.add(new_id, file_name, w, h, boxes, digits)
        writer.images[-1]["source"] = f"{source}/{entry.name}"
    return writer


def _checked_size(mat: Path, entry: MatEntry, image: Path) -> tuple[int, int]:
    """The entry's image size; a name that is not a plain file name (it could reach outside
    the source folder) or an unreadable image is a DataError naming the digitStruct entry."""
    try:
        if Path(entry.name).name != entry.name or not entry.name:
            raise ValueError(f"image name {entry.name!r} is not a plain file name")
        return _image_size(image)
    except ValueError as e:
        raise DataError(f"{mat}: digitStruct({entry.index}) ({entry.name}): {e}") from None


def _clip(entry: MatEntry, w: int, h: int, mat: Path, report: LoadReport):
    """The entry's boxes clipped to its w x h image (xywh) and their digits. Clipped boxes are
    counted but not named: real SVHN boxes often poke out of their crop by a pixel, and naming
    them would crowd the dropped boxes out of the capped warnings."""
    where = f"{mat}: digitStruct({entry.index}) ({entry.name})"
    boxes, digits = [], []
    for xywh, d in zip(entry.boxes_xywh, entry.digits, strict=True):
        box = report.clip(where, xywh, (w, h), warn_clipped=False)
        if box is not None:
            x1, y1, x2, y2 = box
            boxes.append((x1, y1, x2 - x1, y2 - y1))
            digits.append(int(d))
    return boxes, digits
