"""Triton: the repository `digit-export --triton` writes, parsed with tritonclient's own
protobuf, and `digit-read --model triton://...` against a real Triton server on 127.0.0.1.

The server is the tritonserver binary that nvidia-pytriton ships (benchmarks/triton_local.py):
it serves our repository's configs, parameters included, with its Python backend running the
same model.onnx in ONNX Runtime. Two extra models are variants of our config: one whose card
says another canvas than its input dims (must be refused), one whose dynamic batcher holds each
request 2 s (a deterministic timeout, and a batch in flight when the server is killed).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from digit_reader.benchmarks import triton_local
from digit_reader.export.cli import main as export_main
from digit_reader.runtime.cli import main as read_main
from digit_reader.runtime.contract import Backend
from digit_reader.runtime.modelcard import ModelCard, sha256_of
from digit_reader.runtime.reader import Reader
from digit_reader.runtime.triton_config import PARAM_CANVAS, check_config

pytestmark = pytest.mark.slow
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
from google.protobuf import json_format, text_format  # noqa: E402  (after the skip)

NEEDS_SERVER = triton_local.unavailable()
needs_server = pytest.mark.skipif(bool(NEEDS_SERVER), reason=NEEDS_SERVER or "")
TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 6: "TYPE_INT32", 10: "TYPE_FP16"}  # ONNX elem types


def _export(*args):
    return CliRunner().invoke(export_main, [str(a) for a in args])


def _read(*args):
    return CliRunner().invoke(read_main, [str(a) for a in args])


def _parse(model_dir: Path):
    text = (model_dir / "config.pbtxt").read_text(encoding="utf-8")
    return text_format.Parse(text, model_config_pb2.ModelConfig())  # strict: unknown fields fail


def _graph_io(path: Path) -> dict:
    graph = onnx.load(str(path), load_external_data=False).graph
    return {
        v.name: (
            TYPES[v.type.tensor_type.elem_type],
            [d.dim_value for d in v.type.tensor_type.shape.dim][1:],
        )
        for v in list(graph.input) + list(graph.output)
    }


@pytest.fixture(scope="module")
def repo(export_dir, tmp_path_factory) -> Path:
    """`digit-export EXPORT_DIR --triton REPO`: the repository of the session's fp32+fp16 export."""
    repo = tmp_path_factory.mktemp("triton") / "repo"
    result = _export(export_dir, "--triton", repo)
    assert result.exit_code == 0, result.output
    assert "digit_reader, digit_reader_fp16" in result.stdout
    return repo


def test_repository_configs_parse_and_state_the_graphs(repo, export_dir):
    card = ModelCard.load(export_dir / "model.json")
    assert sorted(p.name for p in repo.iterdir()) == [
        "README.md",
        "digit_reader",
        "digit_reader_fp16",
    ]
    for name, file_name in (
        ("digit_reader", "model.onnx"),
        ("digit_reader_fp16", "model.fp16.onnx"),
    ):
        config = _parse(repo / name)
        served = repo / name / "1" / "model.onnx"
        assert config.name == name and config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 32  # digit-export's default --max-batch
        graph = _graph_io(export_dir / file_name)
        assert _graph_io(served) == graph
        tensors = {t.name: t for t in list(config.input) + list(config.output)}
        assert set(tensors) == set(graph)
        for tname, (data_type, dims) in graph.items():
            t = tensors[tname]
            assert model_config_pb2.DataType.Name(t.data_type) == data_type, tname
            if dims:
                assert list(t.dims) == dims and not t.HasField("reshape"), tname
            else:  # num_dets: [N] in the graph
                assert list(t.dims) == [1] and t.HasField("reshape") and list(t.reshape.shape) == []
        assert list(config.dynamic_batching.preferred_batch_size) == [8, 32]
        assert config.dynamic_batching.max_queue_delay_microseconds > 0
        (group,) = config.instance_group
        assert group.count == 1
        assert model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_AUTO"
        (cuda,) = config.optimization.execution_accelerators.gpu_execution_accelerator
        assert cuda.name == "cuda" and dict(cuda.parameters) == {"use_tf32": "0"}
        params = {k: v.string_value for k, v in config.parameters.items()}
        assert params["digit_reader.canvas"] == "{}x{}".format(*card.canvas)
        assert json.loads(params["digit_reader.digits"]) == card.digits
        assert float(params["digit_reader.threshold"]) == card.threshold
        assert params["digit_reader.sharpen"] == "false"
        assert params["digit_reader.sha256"] == card.files[file_name]["sha256"] == sha256_of(served)
        assert params["digit_reader.precision"] == card.files[file_name]["precision"]
        # the reader accepts it, and it is this export's model
        as_json = json_format.MessageToDict(config, preserving_proto_field_name=True)
        check_config(as_json, expected=card)
    readme = (repo / "README.md").read_text()
    assert (
        "tritonserver --model-repository=" in readme and "triton://HOST:8000/digit_reader" in readme
    )


def test_export_from_a_run_writes_the_repository_and_replaces_an_old_one(
    nano_run, export_dir, tmp_path
):
    repo = tmp_path / "repo"
    (repo / "someone_else").mkdir(parents=True)
    shutil.copytree(export_dir, tmp_path / "old")  # an older export's repository in REPO first
    card = ModelCard.load(tmp_path / "old" / "model.json")
    result = _export(tmp_path / "old", "--triton", repo, "--max-batch", "16", "--opt-batch", "4")
    assert result.exit_code == 0, result.output
    assert _parse(repo / "digit_reader").max_batch_size == 16
    assert list(_parse(repo / "digit_reader").dynamic_batching.preferred_batch_size) == [4, 16]

    out = tmp_path / "export"
    result = _export(nano_run, "--out", out, "--parity-images", "4", "--triton", repo)
    assert result.exit_code == 0, result.output
    assert f"triton     {repo} (digit_reader;" in result.stdout
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "digit_reader", "someone_else"]
    assert "removed digit_reader_fp16" in result.stderr  # this export has no fp16 model
    config = _parse(repo / "digit_reader")
    assert config.max_batch_size == 32
    new = ModelCard.load(out / "model.json")
    assert (
        config.parameters["digit_reader.sha256"].string_value == new.files["model.onnx"]["sha256"]
    )
    assert (
        sha256_of(repo / "digit_reader" / "1" / "model.onnx") == new.files["model.onnx"]["sha256"]
    )
    assert card.canvas == new.canvas

    result = _export(out, "--fp16", "--triton", repo)  # an export directory is not re-exported
    assert result.exit_code == 2
    assert "is an export directory" in result.stderr and "Traceback" not in result.output


def test_an_int8_export_gets_its_own_model_in_the_repository(int8_export, tmp_path):
    export, _ = int8_export
    card = ModelCard.load(export / "model.json")
    repo = tmp_path / "repo"
    result = _export(export, "--triton", repo)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in repo.iterdir()) == [
        "README.md",
        "digit_reader",
        "digit_reader_int8",
    ]
    config = _parse(repo / "digit_reader_int8")
    served = repo / "digit_reader_int8" / "1" / "model.onnx"
    assert config.platform == "onnxruntime_onnx"
    assert (
        _graph_io(served)
        == _graph_io(export / "model.int8.onnx")
        == _graph_io(export / "model.onnx")
    )
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["digit_reader.precision"] == card.files["model.int8.onnx"]["precision"] == "int8"
    assert (
        params["digit_reader.sha256"]
        == card.files["model.int8.onnx"]["sha256"]
        == sha256_of(served)
    )
    check_config(json_format.MessageToDict(config, preserving_proto_field_name=True), expected=card)


# -- against a real Triton server ----------------------------------------------------------


def _variant(repo: Path, name: str, edit) -> None:
    shutil.copytree(repo / "digit_reader", repo / name)
    config = _parse(repo / name)
    config.name = name
    edit(config)
    (repo / name / "config.pbtxt").write_text(text_format.MessageToString(config))


def _other_canvas(config):
    config.parameters[PARAM_CANVAS].string_value = "32x64"


def _slow(config):  # the batcher waits 2 s for a batch of 32 that never comes
    config.dynamic_batching.max_queue_delay_microseconds = 2_000_000
    del config.dynamic_batching.preferred_batch_size[:]
    config.dynamic_batching.preferred_batch_size.append(32)


@pytest.fixture(scope="module")
def served_repo(repo, tmp_path_factory) -> Path:
    served = tmp_path_factory.mktemp("served") / "repo"
    shutil.copytree(repo, served)
    _variant(served, "digit_reader_badcanvas", _other_canvas)
    _variant(served, "digit_reader_slow", _slow)
    return served


@pytest.fixture(scope="module")
def server(served_repo):
    server = triton_local.start(served_repo)
    yield server
    server.stop()
    assert not server.group_alive(), "tritonserver or a Python stub outlived stop()"
    assert not server.workspace.exists()


@pytest.fixture(scope="module")
def local(export_dir, synth_root, tmp_path_factory):
    """digit-read on the export itself: the CSV and COCO JSON to match, byte for byte."""
    out = tmp_path_factory.mktemp("local") / "pred.json"
    result = _read(synth_root / "test", "--model", export_dir, "--json", out)
    assert result.exit_code == 0, result.stderr
    return result.stdout, out.read_text()


def _errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@needs_server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_reads_exactly_as_the_local_reader(server, local, synth_root, tmp_path, protocol):
    pred_json = tmp_path / "pred.json"
    url = server.url("digit_reader", protocol)
    result = _read(synth_root / "test", "--model", url, "--json", pred_json, "--batch-size", 5)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == local[0]  # pred.csv, byte for byte
    assert pred_json.read_text() == local[1]  # every detection, boxes and scores
    assert f"{url} on Triton {'HTTP' if protocol == 'http' else 'gRPC'}" in result.stderr
    assert "12 read, 0 failed" in result.stderr


@needs_server
def test_the_card_and_the_batch_limit_come_from_the_server(server, export_dir):
    card = ModelCard.load(export_dir / "model.json")
    reader = Reader(server.url("digit_reader_fp16", "grpc"), batch_size=64)
    assert reader.card.canvas == card.canvas and reader.card.digits == card.digits
    assert reader.card.max_detections == card.max_detections
    assert reader.backend.file == "model.fp16.onnx" and reader.precision == "fp16"
    assert reader.backend.entry["sha256"] == card.files["model.fp16.onnx"]["sha256"]
    assert reader.batch_size == 32  # at most the server's max_batch_size
    check_config(reader.backend.config, expected=card)
    reader.backend.close()


@needs_server
@pytest.mark.parametrize(
    "model, says",
    [
        (
            "digit_reader_badcanvas",
            "refused: input images has dims [3, 64, 128], but its card's canvas is 32x64",
        ),
        ("no_such_model", "model 'no_such_model' is not ready on 127.0.0.1:"),
    ],
)
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_model_that_does_not_match_is_refused_in_one_line(
    server, synth_root, model, says, protocol
):
    result = _read(synth_root / "test", "--model", server.url(model, protocol))
    assert result.exit_code == 2, result.output
    assert _errors(result) == [line for line in result.stderr.splitlines() if line.strip()]
    (line,) = _errors(result)
    assert says in line, line
    if model == "no_such_model":  # and says what is there
        there = "digit_reader, digit_reader_badcanvas, digit_reader_fp16, digit_reader_slow"
        assert f"(ready there: {there})" in line
    assert result.stdout == ""


@pytest.mark.parametrize("scheme, via", [("triton", "HTTP"), ("triton+grpc", "gRPC")])
def test_an_unreachable_server_is_one_line_and_exit_2(synth_root, scheme, via):
    port = triton_local.free_port()  # free: nothing listens there
    result = _read(synth_root / "test", "--model", f"{scheme}://127.0.0.1:{port}/digit_reader")
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert (
        line.startswith("error: ")
        and f"cannot reach a Triton server at 127.0.0.1:{port} over {via}" in line
    )
    assert result.stdout == ""


@needs_server
def test_a_timeout_names_each_image_and_exits_1(server, synth_root):
    url = server.url("digit_reader_slow", "grpc", query="timeout=0.5")
    result = _read(synth_root / "test", "--model", url, "--batch-size", 6)
    assert result.exit_code == 1, result.output
    assert result.stdout == "image_id,pred_label\n"
    named = {Path(e.split(": ")[1]).name for e in _errors(result)}
    assert named == {f"{i}.png" for i in range(1, 13)}
    assert all("triton: no answer within 0.5 s (timeout" in e for e in _errors(result))
    assert "0 read, 12 failed" in result.stderr


@needs_server
def test_a_server_lost_mid_run_keeps_every_row_read_and_names_the_rest(
    served_repo, local, synth_root
):
    """digit-read in its own process, batches of 4 from the slow model: once the first 4 rows are
    out, the second batch is waiting in the server's batcher (2 s): kill the server then."""
    server = triton_local.start(served_repo)
    try:
        url = server.url("digit_reader_slow", "http", query="timeout=30")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        code = "from digit_reader.runtime.cli import main; main()"
        args = [sys.executable, "-c", code, str(synth_root / "test"), "--model", url, "-b", "4"]
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        rows = [proc.stdout.readline() for _ in range(5)]  # the header and the first batch
        server.kill()
        rest, stderr = proc.communicate(timeout=120)
    finally:
        server.stop()
    assert not server.group_alive()
    assert proc.returncode == 1, stderr
    expected = local[0].splitlines(keepends=True)
    assert rows == expected[:5] and rest == ""  # every row that was read, exactly as read locally
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    named = [Path(e.split(": ")[1]).name for e in errors]
    assert sorted(named) == sorted(f"{r.split(',')[0]}.png" for r in expected[5:]), errors
    assert all(": triton: " in e for e in errors)
    assert "4 read, 8 failed" in stderr


@needs_server
def test_load_every_image_answered_exactly_once(server, export_dir, synth_root):
    from digit_reader.benchmarks.triton_load import load_run
    from digit_reader.runtime.triton_backend import TritonBackend

    local = Reader(export_dir, device="cpu")
    prepared = [local.prepare(p) for p in sorted((synth_root / "test").glob("*.png"))]
    reference = local.infer(prepared[:8]) + local.infer(prepared[8:])
    for protocol in ("http", "grpc"):
        backend = TritonBackend(server.url("digit_reader", protocol))
        assert isinstance(backend, Backend)
        row = load_run(backend, prepared, reference, clients=3, requests=10, batch=2)
        backend.close()
        assert row["ok"], row
        assert row["answered"] == row["images"] == 20 and row["server_inferences"] == 20
        # the check can fail: a reference for other images makes every answer wrong
        backend = TritonBackend(server.url("digit_reader", protocol))
        shifted = reference[1:] + reference[:1]
        row = load_run(backend, prepared, shifted, clients=2, requests=3, batch=2)
        backend.close()
        assert not row["ok"] and row["wrong"] > 0
    assert np.isfinite(row["p99_ms"])
