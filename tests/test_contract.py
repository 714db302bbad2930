"""The model's contract lives once (runtime/contract.py): change the canvas or K there and the
model card, the Triton config and the eager reference follow; the digit mapping, the forms,
the parity verdict and the device rule are the same words everywhere."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from digit_reader.export.tensorrt_engine import BatchProfile
from digit_reader.export.triton_repo import _card_io, model_config
from digit_reader.runtime import contract
from digit_reader.runtime.agreement import ImageDiff, Parity
from digit_reader.runtime.contract import (
    Backend,
    Form,
    category_of,
    check_device,
    digit_of,
    export_forms,
    graph_io,
    parity_rule,
    resolve_device,
    verdict,
)
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.modelcard import ModelCard
from digit_reader.runtime.preprocess import load_canvas
from digit_reader.runtime.submission import coco_results
from digit_reader.runtime.triton_config import card_from_config, contract_io
from digit_reader.train import presets
from digit_reader.train.eager import EagerBackend
from digit_reader.train.model import build_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("canvas", "k"), [((32, 96), 7), ((64, 128), 20)])
def test_card_triton_config_and_eager_reference_follow_the_contract(canvas, k):
    inputs, outputs = graph_io(canvas, k)
    card = ModelCard.for_graph(canvas, k)
    card.files["model.onnx"] = {"precision": "fp32", "sha256": "0" * 64}
    assert card.inputs == [t.card_entry() for t in inputs]
    assert card.outputs == [t.card_entry() for t in outputs]

    config = model_config(card, "model.onnx", _card_io(card), BatchProfile())
    dims = {t["name"]: (t["data_type"], t["dims"]) for t in config["input"] + config["output"]}
    assert dims == {name: tuple(v) for name, v in contract_io(canvas, k).items()}
    assert dims["images"] == ("TYPE_UINT8", [3, *canvas]) and dims["boxes"][1] == [k, 4]
    back = card_from_config(config)
    assert (back.canvas, back.max_detections) == (tuple(canvas), k)
    assert back.inputs == card.inputs and back.outputs == card.outputs

    mcfg, _ = presets.preset("nano")
    mcfg.canvas, mcfg.box_detections_per_img = canvas, k
    torch.manual_seed(0)
    eager = EagerBackend(build_model(mcfg).eval(), k)
    assert isinstance(eager, Backend)
    out = eager(np.zeros((2, 3, *canvas), np.uint8))
    for t in outputs:
        assert out[t.name].shape == (2, *t.dims) and out[t.name].dtype == np.dtype(t.dtype)


def test_digits_map_to_labels_and_coco_categories_one_way():
    digits = np.arange(10)
    assert category_of(digits).tolist() == list(range(1, 11))  # 0 is the background
    assert digit_of(category_of(digits)).tolist() == digits.tolist()
    result = coco_results(1, [[0, 0, 2, 3]], [0.9], [0])
    assert result[0]["category_id"] == category_of(0) == 1


def test_forms_are_values_not_display_strings():
    assert Form.parse("onnxruntime int8") == Form("onnxruntime", "int8")
    assert Form.parse("OpenVINO bf16").label == "OpenVINO bf16"
    assert Form("tensorrt", "fp16").label == "TensorRT fp16"
    assert contract.EAGER.label == "PyTorch eager"
    with pytest.raises(UserError):
        Form.parse("onnxruntime int4")
    files = {"model.onnx": {}, "model.int8.onnx": {}, "model.xml": {}, "model.int8.xml": {}}
    got = [(f.engine, f.precision, f.file) for f in export_forms(files)]
    assert got == [
        ("onnxruntime", "fp32", "model.onnx"),
        ("onnxruntime", "int8", "model.int8.onnx"),
        ("openvino", "fp32", "model.xml"),
        ("openvino", "bf16", "model.xml"),
        ("openvino", "int8", "model.int8.xml"),
        ("tensorrt", "fp32", "model.engine"),
        ("tensorrt", "int8", "model.int8.engine"),
    ]


def test_one_verdict_with_int8_accuracy_rule():
    same = Parity([ImageDiff(f"{i}.png", "12", "12", 2) for i in range(100)])
    assert verdict(parity_rule("fp32"), same, 0.05).passed
    rule = parity_rule("int8")
    assert (rule.min_agreement, rule.max_accuracy_drop) == (0.98, 0.01)
    assert verdict(rule, same, 0.05, 0.91, 0.92).passed  # exactly 1 point: allowed
    v = verdict(rule, same, 0.05, 0.90, 0.915)
    assert not v.passed and v.agreeing and v.accurate is False
    assert verdict(rule, same, 0.05).accurate is None  # without labels: not checked
    flips = Parity([ImageDiff(f"{i}.png", "1", "7" if i < 2 else "1", 1) for i in range(100)])
    assert not verdict(parity_rule("bf16"), flips, 0.05).passed  # 98 % < 99 %
    assert parity_rule("bf16").describe() == "numbers identical on at least 99 % of images"


def test_one_device_rule_in_the_same_words():
    assert resolve_device("auto", False) == "cpu" and resolve_device("auto", True) == "cuda"
    assert resolve_device("cuda:1", True) == "cuda:1" and check_device("cpu") == "cpu"
    for device in ("cuda", "cuda:0"):
        with pytest.raises(UserError) as e:
            resolve_device(device, False, "ONNX Runtime")
        assert str(e.value) == (
            f"--device {device}: no CUDA device is visible to ONNX Runtime; use --device cpu"
        )
        assert e.value.code == 2
    with pytest.raises(UserError, match="auto .*cpu, cuda or cuda:N, got 'gpu'"):
        check_device("gpu")


def test_a_sharpening_model_is_measured_on_sharpened_inputs(synth_root):
    """Every benchmark builds its inputs from the card (benchmarks/inputs.py), so a model
    trained on sharpened images is timed and profiled on what the reader feeds it."""
    from digit_reader.benchmarks import inputs

    paths = sorted((synth_root / "test").glob("*.png"))[:3]
    card = ModelCard.for_graph((64, 128), 20, sharpen=True)
    got = inputs.canvases(card, paths)
    want = np.stack([load_canvas(p, card.canvas, sharpen=True)[0] for p in paths])
    plain = np.stack([load_canvas(p, card.canvas)[0] for p in paths])
    assert np.array_equal(got, want) and not np.array_equal(got, plain)


def test_no_benchmark_prepares_images_on_its_own():
    """The drift this replaced: memory and profile letterboxed without the card's sharpen."""
    own = {"canvases", "letterboxed", "load_canvas", "prepare"}
    bad = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        if path.name == "inputs.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                base = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
                if name in own and base != "inputs":
                    bad.append(f"{path.name}:{node.lineno} calls {name}")
    assert not bad, bad


def test_no_function_outside_tests_is_over_60_lines():
    long = []
    for folder in ("runtime", "train", "export", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    n = node.end_lineno - node.lineno + 1
                    if n > 60:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {n}")
    assert not long, long
