"""digit-export's TensorRT step: what a failing engine does to the export, and (on a GPU) that
engines pass the gate.

Here TensorRT is replaced at the exporter's seams (the probe, the builder, the backend), so the
exporter's own handling of a failed parse, build or parity check runs on the CPU: without
--engine the ONNX export stays complete with model.json saying why no engine was written; with
--engine the output directory is left exactly as it was.
"""

import numpy as np
import pytest
from click.testing import CliRunner

from digit_reader.export import engines, exporter
from digit_reader.export.cli import main
from digit_reader.runtime import trt_backend
from digit_reader.runtime.agreement import backend_detections
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.modelcard import ModelCard, card_for
from digit_reader.runtime.ort_backend import OrtBackend
from digit_reader.runtime.trt_backend import TensorRTProbe, probe
from digit_reader.train import samples
from digit_reader.train.data.hw2 import load_split
from digit_reader.train.eager import eager_detections, fp32_reference

pytestmark = pytest.mark.slow
GPU_HERE = TensorRTProbe("10.13.0", 1, "Fake GPU", "8.6", problem=None)


def _snapshot(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*"))}


def _parser_fails(onnx_path, engine_path, *args, **kwargs):
    raise UserError(f"{onnx_path}: TensorRT's ONNX parser failed:\n  node 7 (RoiAlign): no plugin")


class WrongEngine:
    """An engine that builds and runs but finds nothing: the parity gate must catch it."""

    max_batch = 32

    def __init__(self, path, entry, device="cuda"):
        pass

    def __call__(self, images):
        n, k = len(images), 20
        return {
            "num_dets": np.zeros(n, np.int32),
            "boxes": np.zeros((n, k, 4), np.float32),
            "scores": np.zeros((n, k), np.float32),
            "labels": np.zeros((n, k), np.int32),
        }

    def close(self):
        pass


def test_a_failed_engine_leaves_a_complete_onnx_export_that_says_why(
    nano_run, tmp_path, monkeypatch
):
    monkeypatch.setattr(exporter, "probe", lambda: GPU_HERE)
    monkeypatch.setattr(engines, "build_engine", _parser_fails)
    out = tmp_path / "export"
    result = CliRunner().invoke(main, [str(nano_run), "-o", str(out), "--parity-images", "8"])
    assert result.exit_code == 0, result.output
    card = ModelCard.load(out / "model.json")
    assert set(card.files) == {"model.onnx"}
    assert card.engine_note.startswith("TensorRT engine not written: ")
    assert "TensorRT's ONNX parser failed" in card.engine_note
    assert card.engine_note in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx"]
    card_for(out / "model.onnx")  # the card matches the file (size and sha256)
    OrtBackend(out / "model.onnx", "cpu")


def test_with_engine_a_failure_leaves_the_directory_as_it_was(
    nano_run, export_dir, tmp_path, monkeypatch
):
    import shutil

    out = tmp_path / "export"
    shutil.copytree(export_dir, out)  # a previous, good export lives here
    before = _snapshot(out)
    monkeypatch.setattr(exporter, "probe", lambda: GPU_HERE)
    monkeypatch.setattr(
        engines,
        "build_engine",
        lambda onnx_path, engine_path, *a, **k: engine_path.write_bytes(b"plan"),
    )
    monkeypatch.setattr(trt_backend, "TensorRTBackend", WrongEngine)
    args = [str(nano_run), "-o", str(out), "--engine", "--parity-images", "8"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "TensorRT fp32 disagrees with the eager model" in result.stderr
    assert _snapshot(out) == before  # no file added, removed or changed; no temporary left

    fresh = tmp_path / "fresh"
    result = CliRunner().invoke(main, [*args[:2], str(fresh), *args[3:]])
    assert result.exit_code == 1 and not fresh.exists()


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(probe().problem is not None, reason="needs TensorRT + an NVIDIA GPU")
def test_engines_build_and_read_as_the_eager_model_where_the_rule_decides(
    nano_run, synth_root, tmp_path
):
    """fp32 engines pass the default gate. For fp16, a flip of a score sitting on the 0.5
    threshold says nothing about the engine, and the session's half-trained nano model is full
    of them (on purpose); so the fp16 engine must read exactly as the eager model on every image
    whose scores all lie at least MARGIN from the threshold, and those must be most images.
    Needs a GPU: TensorRT builds and runs engines only there."""
    from digit_reader.runtime.trt_backend import TensorRTBackend
    from digit_reader.train import checkpoint

    margin = 0.05
    args = [str(nano_run), "--fp16", "--engine", "-o", str(tmp_path), "--device", "cuda"]
    result = CliRunner().invoke(main, [*args, "--fp16-min-agreement", "0"])
    assert result.exit_code == 0, result.output
    card = ModelCard.load(tmp_path / "model.json")
    assert {"model.engine", "model.fp16.engine"} <= set(card.files)

    paths = [s.path for s in load_split(synth_root, "valid") + load_split(synth_root, "test")]
    model, cfg = checkpoint.load_model(nano_run)
    canv = samples.canvases(paths, cfg.canvas)
    fp32_reference()
    ref = eager_detections(model.cuda(), canv, device="cuda")
    clear = [i for i, d in enumerate(ref) if np.all(np.abs(d.scores - 0.5) >= margin)]
    assert len(clear) >= len(paths) // 2, "too few images where the rule decides"
    engine = TensorRTBackend(tmp_path / "model.fp16.engine", card.files["model.fp16.engine"])
    got = backend_detections(engine, canv)
    flips = [paths[i].name for i in clear if got[i].number() != ref[i].number()]
    assert not flips, flips


class OnnxAsEngine:
    """A stand-in engine that runs the ONNX graph it was "built" from in ONNX Runtime, the int8
    one as the file is (TensorRT's semantics): the engine step's own logic runs for real."""

    max_batch = 32

    def __init__(self, path, entry, device="cuda"):
        onnx_path = path.parent / path.read_text()
        precision = "int8" if ".int8." in onnx_path.name else None
        self.run = OrtBackend(onnx_path, "cpu", precision=precision, int8_cpu_form=False)

    def __call__(self, images):
        return self.run(images)

    def close(self):
        pass


def _build_from(onnx_path, engine_path, *args, **kwargs):
    engine_path.write_text(onnx_path.name)


def test_int8_engine_is_built_from_the_qdq_graph_and_gated_as_int8(
    nano_run, int8_args, tmp_path, monkeypatch
):
    monkeypatch.setattr(exporter, "probe", lambda: GPU_HERE)
    monkeypatch.setattr(engines, "build_engine", _build_from)
    monkeypatch.setattr(trt_backend, "TensorRTBackend", OnnxAsEngine)
    out = tmp_path / "export"
    args = [str(nano_run), "-o", str(out), "--engine", "--parity-images", "8", *int8_args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    card = ModelCard.load(out / "model.json")
    assert {"model.engine", "model.int8.engine"} <= set(card.files)
    entry = card.files["model.int8.engine"]
    assert entry["source"] == "model.int8.onnx" and entry["precision"] == "int8"
    assert entry["images"] == 24 and 0.8 <= entry["agreement"] <= 1 and "accuracy" in entry
    assert (out / "model.int8.engine").read_text() == "model.int8.onnx"
    assert "parity TensorRT int8: " in result.stderr and "; accuracy " in entry["parity"]


def test_a_failed_int8_engine_keeps_the_whole_onnx_export(
    nano_run, int8_args, tmp_path, monkeypatch
):
    """Without --engine: every engine goes, every ONNX graph (int8 and its cache too) stays."""

    def wrong_for_int8(path, entry, device="cuda"):
        return WrongEngine(path, entry) if ".int8." in path.name else OnnxAsEngine(path, entry)

    monkeypatch.setattr(exporter, "probe", lambda: GPU_HERE)
    monkeypatch.setattr(engines, "build_engine", _build_from)
    monkeypatch.setattr(trt_backend, "TensorRTBackend", wrong_for_int8)
    out = tmp_path / "export"
    result = CliRunner().invoke(main, [str(nano_run), "-o", str(out), *int8_args])
    assert result.exit_code == 0, result.output
    card = ModelCard.load(out / "model.json")
    assert set(card.files) == {"model.onnx", "model.int8.onnx"}
    assert card.engine_note.startswith("TensorRT engine not written: TensorRT int8 reads ")
    assert "% (--int8-min-agreement)" in card.engine_note
    assert sorted(p.name for p in out.iterdir()) == [
        "model.int8.calib.json",
        "model.int8.onnx",
        "model.json",
        "model.onnx",
    ]
