"""digit-export on a real (half-trained) nano model: graph fidelity, TensorRT rules, fp16, card."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from digit_reader.export import exporter, fp16, gate, graph_rules
from digit_reader.export.graph import DeployableDetector
from digit_reader.runtime import agreement as parity
from digit_reader.runtime.contract import FP16_MIN_AGREEMENT, Form, parity_rule, verdict
from digit_reader.runtime.modelcard import ModelCard, card_for
from digit_reader.runtime.ort_backend import OrtBackend
from digit_reader.runtime.trt_backend import probe
from digit_reader.train import checkpoint, samples
from digit_reader.train.data.hw2 import load_split
from digit_reader.train.eager import eager_detections

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_cfg(nano_run):
    return checkpoint.load_model(nano_run)


@pytest.fixture(scope="module")
def images(synth_root):
    """36 images the model never trained on: valid and test."""
    return [s.path for s in load_split(synth_root, "valid") + load_split(synth_root, "test")]


@pytest.fixture(scope="module")
def canv(images, model_cfg):
    return samples.canvases(images, model_cfg[1].canvas)


@pytest.fixture(scope="module")
def eager(model_cfg, canv):
    return eager_detections(model_cfg[0], canv)


def test_the_model_under_test_reads_digits(eager):
    """Guards the tests below against passing vacuously on a model that finds nothing."""
    kept = sum(int((d.scores >= 0.5).sum()) for d in eager)
    near = sum(int(((d.scores > 0.3) & (d.scores < 0.7)).sum()) for d in eager)
    assert kept >= 20 and near >= 5, (kept, near)
    assert sum(d.number() != "-1" for d in eager) >= 10


def test_static_graph_is_the_eager_function_bit_for_bit(model_cfg, canv):
    model, cfg = model_cfg
    detector = DeployableDetector(model, cfg).eval()
    with torch.no_grad():
        num, boxes, scores, labels = detector(torch.from_numpy(canv))
        ref = model(list(torch.from_numpy(canv).float().div(255.0).unbind(0)))
    for i, r in enumerate(ref):
        n = int(num[i])
        assert n == len(r["boxes"])
        assert torch.equal(boxes[i, :n], r["boxes"]) and torch.equal(scores[i, :n], r["scores"])
        assert torch.equal(labels[i, :n].long(), r["labels"] - 1)
        assert (labels[i, n:] == -1).all() and (scores[i, n:] == 0).all()


def test_onnx_runtime_agrees_with_eager_on_every_image(export_dir, canv, eager, images):
    assert len(images) >= 20
    got = parity.backend_detections(OrtBackend(export_dir / "model.onnx", "cpu"), canv)
    result = parity.measure(eager, got, [p.name for p in images])
    assert result.failures(0.5, 1e-3, 0.05) == []
    assert result.agreement == 1.0
    assert result.max_box_dev <= 0.5 and result.max_score_dev <= 1e-3
    assert sum(d.matched for d in result.diffs) == sum(len(d.scores) for d in eager)


def test_batch_size_does_not_change_any_result(export_dir, canv):
    backend = OrtBackend(export_dir / "model.onnx", "cpu")
    one = parity.backend_detections(backend, canv, batch_size=1)
    four = parity.backend_detections(backend, canv, batch_size=4)
    for a, b in zip(one, four, strict=True):
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
        assert np.array_equal(a.digits, b.digits)


def test_exported_graphs_hold_the_real_post_processing(export_dir):
    for name in ("model.onnx", "model.fp16.onnx"):
        ops = {n.op_type for n in onnx.load(str(export_dir / name)).graph.node}
        assert {"NonMaxSuppression", "RoiAlign", "TopK"} <= ops, name


def test_export_refuses_a_graph_that_breaks_a_tensorrt_rule(nano_run, tmp_path, monkeypatch):
    monkeypatch.setattr(graph_rules, "TOPK_MAX_K", 2)  # the nano graph's TopKs now break it
    out = tmp_path / "export"
    with pytest.raises(exporter.ExportFailed, match="breaks TensorRT's import rules") as e:
        exporter.run(exporter.ExportOptions(nano_run, out=out, parity_images=4))
    assert "model.onnx breaks" in str(e.value) and "TensorRT needs K < 2" in str(e.value)
    assert not out.exists()  # nothing written, not even the directory


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def test_graph_rules_catch_what_tensorrt_rejects():
    x = _vi("x", TensorProto.FLOAT, ["batch", 6000])
    k = numpy_helper.from_array(np.array([4000], np.int64), "k")
    topk = _model(
        [helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1)],
        [x],
        [
            _vi("v", TensorProto.FLOAT, ["batch", 4000]),
            _vi("i", TensorProto.INT64, ["batch", 4000]),
        ],
        [k],
    )
    assert any("K = 4000" in v for v in graph_rules.violations(topk))

    small = _vi("x", TensorProto.FLOAT, ["batch", 100])
    too_big_k = _model(
        [helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1)],
        [small],
        [_vi("v", TensorProto.FLOAT, ["batch", 200]), _vi("i", TensorProto.INT64, ["batch", 200])],
        [numpy_helper.from_array(np.array([200], np.int64), "k")],
    )
    assert any("exceeds the 100 elements" in v for v in graph_rules.violations(too_big_k))

    nms = _model(
        [helper.make_node("NonMaxSuppression", ["b", "s"], ["sel"])],
        [_vi("b", TensorProto.FLOAT, [1, 6000, 4]), _vi("s", TensorProto.FLOAT, [1, 1, 6000])],
        [_vi("sel", TensorProto.INT64, ["n", 3])],
    )
    found = graph_rules.violations(nms)
    assert any("6000 boxes" in v for v in found)
    assert any("'sel'" in v and "not static" in v for v in found)  # data-dependent output

    unique = _model(
        [helper.make_node("Unique", ["x"], ["y"])],
        [_vi("x", TensorProto.FLOAT, [1, 5])],
        [_vi("y", TensorProto.FLOAT, [1, 5])],
    )
    assert any("supported-operator list" in v for v in graph_rules.violations(unique))
    assert "NonMaxSuppression" in graph_rules.tensorrt_ops()
    assert "Unique" not in graph_rules.tensorrt_ops()


def test_fp16_graph_computes_convolutions_in_fp16_and_post_processing_in_fp32(export_dir):
    model = onnx.load(str(export_dir / "model.fp16.onnx"))
    ops = {n.op_type for n in fp16.fp16_nodes(model)}
    assert {"Conv", "Gemm"} <= ops
    assert ops <= {"Conv", "Relu", "MaxPool", "Add", "Resize", "Gemm", "Reshape"}
    types = {
        v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]
    }
    assert types == {
        "images": TensorProto.UINT8,
        "num_dets": TensorProto.INT32,
        "boxes": TensorProto.FLOAT,
        "scores": TensorProto.FLOAT,
        "labels": TensorProto.INT32,
    }
    size16 = (export_dir / "model.fp16.onnx").stat().st_size
    assert size16 < 0.6 * (export_dir / "model.onnx").stat().st_size


def test_fp16_meets_its_bar_in_onnx_runtime_on_the_cpu(export_dir, canv, eager, images):
    got = parity.backend_detections(OrtBackend(export_dir / "model.fp16.onnx", "cpu"), canv)
    result = parity.measure(eager, got, [p.name for p in images])
    assert result.agreement >= FP16_MIN_AGREEMENT, result.summary()
    assert 0 < result.max_score_dev < 0.05  # really fp16 (not identical), and close


def test_perturbed_graph_fails_the_gate_with_a_per_image_report(
    export_dir, canv, eager, images, tmp_path
):
    model = onnx.load(str(export_dir / "model.onnx"))
    biggest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))  # the box head's fc6
    w = numpy_helper.to_array(biggest)
    rng = np.random.default_rng(0)
    noisy = w + rng.normal(0, 0.5 * float(w.std()), w.shape).astype(w.dtype)
    biggest.CopyFrom(numpy_helper.from_array(noisy, biggest.name))
    onnx.save(model, str(tmp_path / "perturbed.onnx"))
    got = parity.backend_detections(OrtBackend(tmp_path / "perturbed.onnx", "cpu"), canv)
    # every third image as the perturbed graph reads it, the others as the eager model does
    mixed = [g if i % 3 == 0 else e for i, (g, e) in enumerate(zip(got, eager, strict=True))]
    result = parity.measure(eager, mixed, [p.name for p in images])
    v = verdict(parity_rule("fp32"), result, 0.05)
    passed, bad = v.passed, v.bad
    failing = [i for i, d in enumerate(result.diffs) if any(d is b for b in bad)]
    assert not passed and failing and all(i % 3 == 0 for i in failing)
    with pytest.raises(exporter.ExportFailed, match="disagrees with the eager model") as e:
        gate.enforce("onnxruntime fp32", parity_rule("fp32"), result, 0.05)
    head, *lines = str(e.value).splitlines()
    assert f"on {len(bad)} of {len(images)} images" in head
    # one line per failing image, each starting with that image's name, in order
    assert [line.strip().split(":")[0] for line in lines] == [images[i].name for i in failing]


def test_model_json_round_trips_and_describes_the_files(export_dir, nano_run):
    card, entry = card_for(export_dir / "model.onnx")
    raw = json.loads((export_dir / "model.json").read_text())
    assert ModelCard.from_dict(raw).to_dict() == raw
    assert card.canvas == (64, 128) and card.threshold == 0.5 and card.max_detections == 20
    assert [o["name"] for o in card.outputs] == ["num_dets", "boxes", "scores", "labels"]
    assert card.inputs[0] == {"name": "images", "dtype": "uint8", "shape": ["batch", 3, 64, 128]}
    assert entry["precision"] == "fp32" and card.files["model.fp16.onnx"]["precision"] == "fp16"
    assert card.source_checkpoint["path"].endswith("best.pt")
    from digit_reader.runtime.modelcard import sha256_of

    assert card.source_checkpoint["sha256"] == sha256_of(nano_run / "best.pt")
    assert card.opset == 18 and {"torch", "onnx", "onnxruntime"} <= set(card.versions)


@pytest.mark.skipif(probe().version is not None, reason="tensorrt is installed here")
def test_without_tensorrt_the_export_says_why_and_exits_0(export_result):
    out_dir, result = export_result
    assert "TensorRT engine skipped: tensorrt is not installed" in result.stderr
    assert not list(out_dir.glob("*.engine"))
    assert "model.onnx" in result.stdout and "parity" in result.stdout


@pytest.mark.skipif(probe().version is not None, reason="tensorrt is installed here")
def test_engine_flag_makes_the_engine_mandatory_and_fails_fast(nano_run, tmp_path):
    from click.testing import CliRunner

    from digit_reader.export.cli import main

    result = CliRunner().invoke(main, [str(nano_run / "best.pt"), "--engine", "-o", str(tmp_path)])
    assert result.exit_code == 1
    assert "--engine: no TensorRT engine can be built here: tensorrt is not installed" in (
        result.stderr
    )
    assert not list(tmp_path.iterdir())  # failed before writing anything


def test_a_failed_gate_draws_the_failing_images_outside_the_export(
    export_dir, canv, eager, images, tmp_path
):
    """The gate's failure message names a folder holding eager-vs-form pictures of exactly the
    failing images; nothing is written into the export directory."""
    from PIL import Image

    class Perturbed:
        """ORT on the graph, with every second image's boxes shifted by 3 px."""

        def __init__(self):
            self.ort, self.seen = OrtBackend(export_dir / "model.onnx", "cpu"), 0

        def __call__(self, batch):
            out = self.ort(batch)
            for i in range(len(batch)):
                if (self.seen + i) % 2 == 0:
                    out["boxes"][i] += 3.0
            self.seen += len(batch)
            return out

    names = [p.name for p in images]
    opts = exporter.ExportOptions(export_dir.parent, out=tmp_path / "never")
    the_gate = exporter.Gate(names, canv, eager, 0.05, opts)
    with pytest.raises(exporter.ExportFailed) as e:
        the_gate.check(Form("onnxruntime", "fp32"), Perturbed())
    last = str(e.value).splitlines()[-1]
    assert last.startswith("pictures (eager left, onnxruntime fp32 right): ")
    where = Path(last.split(": ", 1)[1])
    shifted = {names[i] for i in range(len(names)) if i % 2 == 0 and len(eager[i].scores)}
    assert {p.name for p in where.iterdir()} == shifted
    assert Image.open(where / sorted(shifted)[0]).width > 2 * canv.shape[3]
    assert not (tmp_path / "never").exists()


def test_the_bf16_gate_takes_its_own_threshold_and_only_with_openvino(nano_run):
    from click.testing import CliRunner

    from digit_reader.export.cli import main

    rule = exporter.ExportOptions(nano_run, bf16_min_agreement=0.7).rule("bf16")
    assert rule.min_agreement == 0.7
    result = CliRunner().invoke(main, [str(nano_run), "--bf16-min-agreement", "0.9"])
    assert result.exit_code == 2 and "--bf16-min-agreement needs --openvino" in result.output
