"""Triton decisions that need no server and no model: triton:// URLs, the card in a config's
parameters, the config check, the config.pbtxt writer, and how request failures read."""

import subprocess
import sys

import pytest

from digit_reader.export.tensorrt_engine import BatchProfile
from digit_reader.export.triton_repo import _card_io, batching, model_config, model_name, to_pbtxt
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.modelcard import ModelCard
from digit_reader.runtime.reader import resolve_model
from digit_reader.runtime.triton_backend import describe_failure
from digit_reader.runtime.triton_config import (
    PARAM_CANVAS,
    card_from_config,
    check_config,
    config_problems,
)
from digit_reader.runtime.triton_url import TritonTarget, is_triton_url, parse_url


def _card(sharpen=False) -> ModelCard:
    k = 7
    card = ModelCard(
        canvas=(48, 96),
        max_detections=k,
        digits=[str(d) for d in "9876543210"],
        threshold=0.625,
        sharpen=sharpen,
        inputs=[{"name": "images", "dtype": "uint8", "shape": ["batch", 3, 48, 96]}],
        outputs=[
            {"name": "num_dets", "dtype": "int32", "shape": ["batch"]},
            {"name": "boxes", "dtype": "float32", "shape": ["batch", k, 4]},
            {"name": "scores", "dtype": "float32", "shape": ["batch", k]},
            {"name": "labels", "dtype": "int32", "shape": ["batch", k]},
        ],
        source_checkpoint={"sha256": "c" * 64},
    )
    card.files = {
        "model.onnx": {"precision": "fp32", "sha256": "a" * 64},
        "model.fp16.engine": {"precision": "fp16", "sha256": "b" * 64, "source": "x.onnx"},
    }
    card.engine_batch = {"min": 1, "opt": 4, "max": 16}
    return card


def _config(card=None, file_name="model.onnx", profile=None) -> dict:
    card = card or _card()
    return model_config(card, file_name, _card_io(card), profile or BatchProfile(1, 8, 32))


@pytest.mark.parametrize(
    "url, want",
    [
        ("triton://h/m", TritonTarget("http", "h", 8000, "m")),
        ("triton+grpc://h/m", TritonTarget("grpc", "h", 8001, "m")),
        (
            "TRITON+HTTP://10.0.0.1:9000/digit_reader/3",
            TritonTarget("http", "10.0.0.1", 9000, "digit_reader", "3"),
        ),
        ("triton://[::1]:81/m?timeout=2.5", TritonTarget("http", "::1", 81, "m", "", 2.5)),
    ],
)
def test_triton_urls(url, want):
    assert is_triton_url(url)
    assert parse_url(url) == want
    assert resolve_model(url) == want  # before any path handling: no such file is needed
    assert parse_url(want.name) == want.__class__(**{**want.__dict__, "timeout": 60.0})


@pytest.mark.parametrize(
    "url, says",
    [
        ("triton+udp://h/m", "unknown scheme"),
        ("triton://h:99999/m", "port"),
        ("triton://h", "want triton://HOST:PORT/MODEL"),
        ("triton://h/m/latest", "VERSION"),
        ("triton://h/m/1/2", "want triton://"),
        ("triton://h/m?timeout=0", "timeout"),
        ("triton://h/m?timeout=soon", "timeout"),
        ("triton://h/m?retries=3", "unknown option 'retries'"),
    ],
)
def test_bad_triton_urls_are_usage_errors(url, says):
    with pytest.raises(UserError) as e:
        parse_url(url)
    assert e.value.code == 2 and says in str(e.value)


def test_paths_are_not_urls():
    assert not is_triton_url("export/model.onnx")
    assert not is_triton_url("tritonmodels/model.onnx")


def test_the_card_survives_a_config_round_trip():
    card = _card(sharpen=True)
    config = _config(card)
    assert config["name"] == "digit_reader" and config["max_batch_size"] == 32
    back = card_from_config(config)
    for key in ("canvas", "max_detections", "digits", "threshold", "sharpen"):
        assert getattr(back, key) == getattr(card, key), key
    assert back.files == {"model.onnx": {"precision": "fp32", "sha256": "a" * 64}}
    assert back.source_checkpoint == {"sha256": "c" * 64}
    check_config(config, expected=card)  # what the exporter writes, the reader accepts


def test_engine_configs_keep_to_the_engine_profile():
    card = _card()
    config = _config(card, "model.fp16.engine", BatchProfile(1, 8, 32))
    assert config["name"] == "digit_reader_trt_fp16"
    assert config["platform"] == "tensorrt_plan"
    assert config["max_batch_size"] == 16  # the profile the engine was built with
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 16]
    assert config["instance_group"] == [{"count": 1, "kind": "KIND_GPU"}]
    assert "optimization" not in config  # ONNX Runtime's CUDA options are not for a plan
    assert batching(BatchProfile(1, 8, 8), None, False) == (8, [8])
    assert model_name("model.int8.onnx", "int8") == "digit_reader_int8"
    assert model_name("model.engine", "fp32") == "digit_reader_trt"


def _problems(edit, expected=None) -> str:
    config = _config()
    edit(config)
    return "; ".join(config_problems(config, expected))


def test_the_check_names_what_does_not_match():
    def dims(name, value):
        def edit(c):
            next(t for t in c["input"] + c["output"] if t["name"] == name)["dims"] = value

        return edit

    assert _problems(lambda c: None) == ""
    assert "input images has dims [3, 64, 128], but its card's canvas is 48x96" in _problems(
        dims("images", [3, 64, 128])
    )
    assert "output boxes has dims [7, 5], want [7, 4]" in _problems(dims("boxes", [7, 5]))
    assert "output scores has dims [20], want [7]" in _problems(dims("scores", [20]))

    def retype(c):
        c["output"][2]["data_type"] = "TYPE_FP16"

    assert "scores is TYPE_FP16, want TYPE_FP32" in _problems(retype)

    def rename(c):
        c["output"][1]["name"] = "bboxes"

    assert "outputs are ['bboxes', 'labels', 'num_dets', 'scores']" in _problems(rename)

    def no_batching(c):
        c["max_batch_size"] = 0

    assert "max_batch_size is 0" in _problems(no_batching)

    def canvas(c):
        c["parameters"][PARAM_CANVAS] = {"string_value": "48 by 96"}

    assert "digit_reader.canvas is '48 by 96', not HxW" in _problems(canvas)
    assert "no digit_reader.* parameters" in _problems(lambda c: c.pop("parameters"))

    def drop_sha(c):
        del c["parameters"]["digit_reader.sha256"]

    assert "lacks the parameters digit_reader.sha256" in _problems(drop_sha)

    other = _card()
    other.files["model.onnx"]["sha256"] = "d" * 64
    other.threshold = 0.5
    found = _problems(lambda c: None, expected=other)
    assert "threshold is 0.625 on the server, 0.5 expected" in found
    assert "sha256 differs" in found
    with pytest.raises(UserError) as e:
        check_config(_config(), expected=other, where="triton://h:1/m")
    assert e.value.code == 2 and str(e.value).startswith("triton://h:1/m: refused: ")
    assert "\n" not in str(e.value)


def test_config_text_is_valid_protobuf_and_says_what_the_dict_says():
    text_format = pytest.importorskip("google.protobuf.text_format")
    json_format = pytest.importorskip("google.protobuf.json_format")
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    for file_name in ("model.onnx", "model.fp16.engine"):
        config = _config(_card(), file_name)
        text = to_pbtxt(config, header="written by a test\n\nwith a blank line")
        parsed = text_format.Parse(text, model_config_pb2.ModelConfig())
        assert parsed == json_format.ParseDict(config, model_config_pb2.ModelConfig())
        assert parsed.output[0].HasField("reshape") and list(parsed.output[0].reshape.shape) == []
        assert parsed.parameters["digit_reader.canvas"].string_value == "48x96"
    with pytest.raises(text_format.ParseError):  # the parse is strict: a misspelt field fails
        text_format.Parse(
            text.replace("max_batch_size", "max_batch"), model_config_pb2.ModelConfig()
        )


def test_request_failures_read_as_one_line():
    utils = pytest.importorskip("tritonclient.utils")
    t = parse_url("triton+grpc://127.0.0.1:9/m?timeout=3")
    assert describe_failure(TimeoutError(), t) == (
        "no answer within 3 s (timeout; ?timeout=SECONDS raises it)",
        True,
    )
    refused = describe_failure(ConnectionRefusedError(111, "Connection refused"), t)
    assert refused == ("cannot reach a Triton server at 127.0.0.1:9 over gRPC (refused)", True)
    gone = utils.InferenceServerException("failed to\nconnect", "StatusCode.UNAVAILABLE")
    assert describe_failure(gone, t) == (
        "cannot reach a Triton server at 127.0.0.1:9 over gRPC (failed to connect)",
        True,
    )
    late = utils.InferenceServerException("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED")
    assert describe_failure(late, t)[1] is True
    bad = utils.InferenceServerException("unexpected shape for input 'images'", "400")
    assert describe_failure(bad, t) == (
        "the server refused the request: unexpected shape for input 'images'",
        False,
    )


def test_without_tritonclient_the_runtime_imports_and_names_the_extra(tmp_path):
    """The base install has no tritonclient: every runtime module imports, a triton:// model
    is one line naming the extra, exit 2."""
    code = """
import importlib, pkgutil, sys
sys.modules["tritonclient"] = None  # `import tritonclient...` now raises ImportError
import digit_reader.runtime as runtime
for m in pkgutil.iter_modules(runtime.__path__, "digit_reader.runtime."):
    importlib.import_module(m.name)
from click.testing import CliRunner
from digit_reader.runtime.cli import main
result = CliRunner().invoke(main, ["1.png", "--model", "triton+grpc://127.0.0.1:1/digit_reader"])
print(result.exit_code)
print(result.stderr, end="")
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 0, done.stderr
    code, line = done.stdout.splitlines()
    assert code == "2"
    assert line.startswith("error: tritonclient (grpc) is not installed: ")
    assert "pip install 'digit-reader[triton]'" in line
