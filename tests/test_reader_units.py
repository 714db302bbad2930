"""Reader decisions that need no model: model.json checks, provider choice, engine matching."""

import json

import pytest

from digit_reader.runtime.cli import collect_inputs
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.modelcard import ModelCard, card_for
from digit_reader.runtime.ort_backend import choose_providers
from digit_reader.runtime.reader import resolve_model
from digit_reader.runtime.trt_backend import engine_mismatch


def _card(tmp_path, payload=b"onnx bytes"):
    model = tmp_path / "model.onnx"
    model.write_bytes(payload)
    card = ModelCard(canvas=(64, 128), max_detections=10, opset=18)
    card.add_file(model, "fp32")
    card.save(tmp_path / "model.json")
    return model, card


def test_model_card_round_trip(tmp_path):
    model, card = _card(tmp_path)
    loaded, entry = card_for(model)
    assert loaded == card
    assert loaded.canvas == (64, 128)
    assert entry["precision"] == "fp32" and entry["bytes"] == len(b"onnx bytes")


def test_missing_or_mismatching_card_is_a_clear_error(tmp_path):
    model, _ = _card(tmp_path)
    model.write_bytes(b"another model")
    with pytest.raises(UserError, match="does not match"):
        card_for(model)
    (tmp_path / "model.json").unlink()
    with pytest.raises(UserError, match="no model.json beside it"):
        card_for(model)
    other = tmp_path / "other.onnx"
    other.write_bytes(b"x")
    _card(tmp_path)
    with pytest.raises(UserError, match="not listed"):
        card_for(other)


def test_card_with_wrong_format_is_refused(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"format": "yolo", "canvas": [1, 2]}))
    with pytest.raises(UserError, match="not a digit-reader model card"):
        ModelCard.load(tmp_path / "model.json")


def test_provider_choice_never_asks_for_tensorrt_and_turns_tf32_off():
    cpu_only = ["CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    cuda_fp32 = [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    assert choose_providers(cpu_only, "auto") == cpu_only
    assert choose_providers(gpu, "auto") == cuda_fp32
    assert choose_providers(gpu, "cuda") == cuda_fp32
    assert choose_providers(gpu, "cpu") == cpu_only
    with pytest.raises(UserError, match="no CUDA provider"):
        choose_providers(cpu_only, "cuda")


def test_engine_must_match_tensorrt_version_and_gpu():
    built = {"tensorrt": "10.13.0", "gpu": "NVIDIA A10"}
    assert engine_mismatch(built, "10.13.0", "NVIDIA A10") is None
    assert "TensorRT 10.13.0" in engine_mismatch(built, "11.0.0", "NVIDIA A10")
    assert "NVIDIA L4" in engine_mismatch(built, "10.13.0", "NVIDIA L4")


def test_model_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("DIGIT_MODEL", raising=False)
    with pytest.raises(UserError, match="digit-export") as e:
        resolve_model(None)
    assert e.value.code == 2
    model, _ = _card(tmp_path)
    monkeypatch.setenv("DIGIT_MODEL", str(tmp_path))
    assert resolve_model(None) == model  # a directory means its model.onnx (no tensorrt here)


def test_inputs_are_collected_in_natural_order(tmp_path):
    for name in ["10.png", "2.png", "1.jpg", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    files, missing = collect_inputs((str(tmp_path), str(tmp_path / "nope.png")))
    assert [f.name for f in files] == ["1.jpg", "2.png", "10.png"]
    assert missing and "nope.png" in missing[0]
