"""Shared fixtures.

Session: one small synthetic data set, one nano model trained until it reads digits (about 45 s
on 2 cores), and its export (fp32 + fp16 ONNX, parity-gated) made by `digit-export`. The model
is deliberately half-trained: it finds digits (mAP50 ~0.4) with many scores near the 0.5
threshold, which is where exported graphs and decoding are most likely to disagree.

SVHN format 1: `write_digitstruct` writes a digitStruct.mat the way MATLAB v7.3 does, and
`make_svhn` a tiny extracted SVHN (train/, test/, extra/) with its known truth.
"""

from __future__ import annotations

import itertools
import string
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image


@pytest.fixture(scope="session", autouse=True)
def graph_cache_dir(tmp_path_factory) -> Path:
    """digit-export's graph cache for this session (never the user's): the first export of a
    checkpoint pays for torch.onnx.export, the session's later ones reuse its model.onnx."""
    from digit_reader.export.graph_cache import CACHE_ENV

    root = tmp_path_factory.mktemp("graph-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(root))
        yield root


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    from digit_reader.train.data.synth import synthesize

    root = tmp_path_factory.mktemp("svhn-like")
    synthesize(root, {"train": 320, "valid": 24, "test": 12}, seed=5)
    return root


FIRST_EPOCHS, MAX_EPOCHS = 6, 10


def _reads_digits(run: Path, root: Path) -> bool:
    """Whether the run's model keeps enough digits on the valid and test images for the tests
    that compare its forms (they need >= 20 kept boxes and >= 10 numbers: a margin above)."""
    import torch

    from digit_reader.train import checkpoint, evaluate
    from digit_reader.train.config import TrainConfig
    from digit_reader.train.data.hw2 import load_split

    model, cfg = checkpoint.load_model(run)  # best.pt: what the tests export and read
    samples = load_split(root, "valid") + load_split(root, "test")
    dets = evaluate.predict(model, samples, cfg.canvas, TrainConfig(), torch.device("cpu"))
    kept = sum(int((d.scores >= 0.5).sum()) for d in dets)
    return kept >= 28 and sum(d.number() != "-1" for d in dets) >= 14


@pytest.fixture(scope="session")
def nano_run(synth_root, tmp_path_factory) -> Path:
    """nano after FIRST_EPOCHS epochs (240 steps), or resumed epoch by epoch (up to
    MAX_EPOCHS) until it reads digits: training is bit-exact on one CPU, but another CPU's
    kernels train another model (an AVX2 CPU's was weaker after 6 epochs than AVX-512's)."""
    from digit_reader.train import engine, presets

    mcfg, tcfg = presets.preset("nano")
    tcfg.epochs = FIRST_EPOCHS
    run = tmp_path_factory.mktemp("runs") / "nano"
    spec = engine.RunSpec(run, synth_root, mcfg, tcfg, preset="nano", device="cpu")
    engine.train(spec, progress=False)
    while tcfg.epochs < MAX_EPOCHS and not _reads_digits(run, synth_root):
        tcfg.epochs += 1
        engine.train(spec, resume=True, progress=False)
    return run


@pytest.fixture(scope="session")
def export_result(nano_run):
    """(export dir, CliRunner result) of `digit-export RUN --fp16` with default options."""
    from digit_reader.export.cli import main

    result = CliRunner().invoke(main, [str(nano_run), "--fp16"])
    assert result.exit_code == 0, result.output
    return nano_run / "export", result


@pytest.fixture(scope="session")
def export_dir(export_result) -> Path:
    return export_result[0]


# The half-trained model has many scores near 0.5, where int8 flips a digit most easily, and the
# session's data has 24 valid images (one flip = 4 %): the int8 gate here is looser than the
# default (98 % agreement, 1 point of accuracy), which the demo's trained model meets on 200.
@pytest.fixture(scope="session")
def int8_args() -> list[str]:
    """digit-export's int8 options for the session's model."""
    loose = ["--int8-min-agreement", "0.8", "--int8-max-accuracy-drop", "0.1"]
    return ["--int8", "--calib-images", "64", *loose]


@pytest.fixture(scope="session")
def bf16_args() -> list[str]:
    """digit-export --openvino's bf16 option for the session's model: on a CPU with bf16 the
    fp32 IR is also gated in bf16, whose rounding flips the same near-0.5 scores as int8's."""
    return ["--bf16-min-agreement", "0.8"]


@pytest.fixture(scope="session")
def int8_export(nano_run, int8_args, tmp_path_factory):
    """(export dir, CliRunner result) of `digit-export RUN` with int8_args (fp32 + int8)."""
    from digit_reader.export.cli import main

    out = tmp_path_factory.mktemp("int8") / "export"
    args = [str(nano_run), "-o", str(out), *int8_args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out, result


MATLAB_HEADER = (
    b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 "
    b"HDF5 schema 1.00 ."
)


def _ref_names():
    """MATLAB names the objects in #refs# a, b, ..., z, A, ..., then two letters."""
    letters = string.ascii_lowercase + string.ascii_uppercase
    for n in itertools.count(1):
        for t in itertools.product(letters, repeat=n):
            yield "".join(t)


def _write_digitstruct(path, entries, corrupt=None):
    """entries: [(name, [(left, top, width, height, label), ...]), ...] as in Stanford's files.

    Layout: 512-byte MATLAB user block, #refs# holding every referenced object, digitStruct a
    struct group whose `name` and `bbox` are (N, 1) object-reference datasets. A name is a (len, 1)
    uint16 char column; a bbox group's fields are (1, 1) doubles when k == 1, else (k, 1)
    references to (1, 1) doubles. `corrupt(f, refs)` may damage the file before it closes.
    """
    import h5py

    names = _ref_names()
    with h5py.File(path, "w", userblock_size=512, libver="earliest") as f:
        refs = f.create_group("#refs#")
        empty = refs.create_dataset(next(names), data=np.zeros(2, np.uint64))
        empty.attrs["MATLAB_class"] = np.bytes_("canonical empty")
        empty.attrs["MATLAB_empty"] = np.uint8(1)

        def double(value):
            ds = refs.create_dataset(next(names), data=np.array([[float(value)]]))
            ds.attrs["MATLAB_class"] = np.bytes_("double")
            return ds

        group = f.create_group("digitStruct")
        group.attrs["MATLAB_class"] = np.bytes_("struct")
        name_refs = np.empty((len(entries), 1), dtype=h5py.ref_dtype)
        bbox_refs = np.empty((len(entries), 1), dtype=h5py.ref_dtype)
        for i, (name, boxes) in enumerate(entries):
            chars = np.frombuffer(name.encode("utf-16-le"), "<u2").reshape(-1, 1)
            ds = refs.create_dataset(next(names), data=chars)
            ds.attrs["MATLAB_class"] = np.bytes_("char")
            ds.attrs["MATLAB_int_decode"] = np.int32(2)
            name_refs[i, 0] = ds.ref
            bbox = refs.create_group(next(names))
            bbox.attrs["MATLAB_class"] = np.bytes_("struct")
            for j, key in enumerate(("left", "top", "width", "height", "label")):
                if len(boxes) == 1:
                    ds = bbox.create_dataset(key, data=np.array([[float(boxes[0][j])]]))
                    ds.attrs["MATLAB_class"] = np.bytes_("double")
                else:
                    col = np.array([[double(b[j]).ref] for b in boxes], dtype=h5py.ref_dtype)
                    ds = bbox.create_dataset(key, data=col, dtype=h5py.ref_dtype)
                    ds.attrs["MATLAB_class"] = np.bytes_("cell")
            bbox_refs[i, 0] = bbox.ref
        for key, data in (("name", name_refs), ("bbox", bbox_refs)):
            ds = group.create_dataset(key, data=data, dtype=h5py.ref_dtype)
            ds.attrs["MATLAB_class"] = np.bytes_("cell")
        if corrupt is not None:
            corrupt(f, refs)
    with open(path, "r+b") as fh:
        fh.write(MATLAB_HEADER.ljust(116) + bytes(8) + b"\x00\x02IM")


def _make_svhn(root, n_train=20, n_test=6, extra=0):
    """A tiny extracted SVHN: each image's digits are its index, boxes deterministic."""
    truth = {}
    for source, n in (("train", n_train), ("test", n_test), ("extra", extra)):
        if not n:
            continue
        d = root / source
        d.mkdir(parents=True)
        entries = []
        for i in range(1, n + 1):
            digits = [int(c) for c in str(i * 7)]
            boxes = [(3 + 9 * j, 4, 8, 12, d or 10) for j, d in enumerate(digits)]
            w, h = 10 + 9 * len(digits), 20 + i % 5
            pixels = np.full((h, w, 3), (i * 11) % 256, np.uint8)
            Image.fromarray(pixels).save(d / f"{i}.png")
            entries.append((f"{i}.png", boxes))
            truth[f"{source}/{i}.png"] = (digits, boxes, (w, h))
        _write_digitstruct(d / "digitStruct.mat", entries)
    return truth


@pytest.fixture
def write_digitstruct():
    """write_digitstruct(path, entries, corrupt=None); see _write_digitstruct."""
    return _write_digitstruct


@pytest.fixture
def make_svhn():
    """make_svhn(root, n_train, n_test, extra) -> {"train/1.png": (digits, boxes, (w, h))}."""
    return _make_svhn
