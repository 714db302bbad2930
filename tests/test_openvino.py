"""OpenVINO as the second CPU engine, the real OpenVINO runtime on this CPU: digit-read
--engine openvino reads the session's export as ONNX Runtime does, digit-export --openvino
writes IR held to the parity gate, precision is never the CPU's silent default, and a failure
is one line."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("openvino", reason="the [openvino] extra is not installed")

from digit_reader.export import exporter, openvino_ir  # noqa: E402
from digit_reader.export.cli import main as export_main  # noqa: E402
from digit_reader.runtime.cli import main as read_main  # noqa: E402
from digit_reader.runtime.contract import Backend, Form  # noqa: E402
from digit_reader.runtime.cpu_features import int8_saturates  # noqa: E402
from digit_reader.runtime.errors import BackendError, UserError  # noqa: E402
from digit_reader.runtime.modelcard import ModelCard, card_for, sha256_of  # noqa: E402
from digit_reader.runtime.openvino_backend import (  # noqa: E402
    OpenVinoBackend,
    chunks,
    compile_config,
    has_bf16,
    import_openvino,
    shared_core,
)

pytestmark = pytest.mark.slow
ROW = re.compile(r"^\d+,(-1|\d+)$")
BF16_HERE = has_bf16(shared_core())
VNNI_HERE = not int8_saturates()  # OpenVINO's int8 kernels are exact here


def _read(*args):
    return CliRunner().invoke(read_main, [str(a) for a in args])


@pytest.fixture(scope="module")
def openvino_export(nano_run, int8_args, bf16_args, tmp_path_factory):
    """(export dir, CliRunner result) of `digit-export RUN --openvino` with int8 (fp32 + int8
    ONNX and IR)."""
    out = tmp_path_factory.mktemp("openvino") / "export"
    args = [str(nano_run), "-o", str(out), "--openvino", *int8_args, *bf16_args]
    result = CliRunner().invoke(export_main, args)
    assert result.exit_code == 0, result.output
    return out, result


def test_openvino_reads_the_onnx_export_as_onnx_runtime_does(export_dir, synth_root):
    ort = _read(synth_root / "test", "--model", export_dir)
    ov = _read(synth_root / "test", "--model", export_dir, "--engine", "openvino")
    assert ort.exit_code == ov.exit_code == 0, ov.stderr
    assert ov.stdout == ort.stdout  # byte-identical pred.csv, fp32
    assert "on OpenVINO " in ov.stderr and "CPU fp32" in ov.stderr and "LATENCY" not in ov.stderr
    one = _read(synth_root / "test", "--model", export_dir, "--engine", "openvino", "-b", "1")
    assert one.stdout == ort.stdout and "LATENCY" in one.stderr


def test_the_export_writes_fp32_ir_that_stays_fp32_and_gates_it(openvino_export):
    out, result = openvino_export
    card = ModelCard.load(out / "model.json")
    entry = card.files["model.xml"]
    assert entry["precision"] == "fp32" and entry["source"] == "model.onnx"
    assert entry["openvino"] == import_openvino().__version__.split("-")[0]
    assert entry["weights"] == {
        "file": "model.bin",
        "sha256": sha256_of(out / "model.bin"),
        "bytes": (out / "model.bin").stat().st_size,
    }
    card_for(out / "model.xml")  # the card matches the IR and its weights
    # not compressed to fp16 (save_model's default): the weights take fp32's room
    assert (out / "model.bin").stat().st_size > 0.9 * (out / "model.onnx").stat().st_size
    assert (
        "parity OpenVINO fp32: " in result.stderr
        and "numbers identical (100.0 %)" in (entry["parity"])
    )
    int8 = card.files["model.int8.xml"]
    assert int8["precision"] == "int8" and int8["source"] == "model.int8.onnx"
    if VNNI_HERE:
        assert 0.8 <= int8["agreement"] <= 1 and "accuracy" in int8
    else:  # written, and honest about it
        assert "agreement" not in int8 and "has no VNNI" in int8["not_gated"]
        assert "parity OpenVINO int8: not gated here" in result.stderr
    if BF16_HERE:
        assert entry["bf16"]["gated"] and entry["bf16"]["agreement"] >= 0.8
    else:
        assert entry["bf16"] == {"gated": False, "note": entry["bf16"]["note"]}
        assert "has no bf16" in entry["bf16"]["note"]


def test_an_export_read_with_openvino_picks_the_ir_and_agrees(openvino_export, synth_root):
    out, _ = openvino_export
    ort = _read(synth_root / "test", "--model", out)
    ov = _read(synth_root / "test", "--model", out, "--engine", "openvino")
    assert ov.exit_code == 0 and ov.stdout == ort.stdout
    assert "model.xml on OpenVINO" in ov.stderr
    int8 = _read(synth_root / "test", "--model", out, "--engine", "openvino", "--precision", "int8")
    if not VNNI_HERE:  # its int8 kernels would saturate: one line, no CSV
        assert int8.exit_code == 2 and int8.stdout == "" and int8.stderr.count("\n") == 1
        assert "without VNNI" in int8.stderr and "--engine onnxruntime" in int8.stderr
        return
    assert int8.exit_code == 0 and "model.int8.xml on OpenVINO" in int8.stderr
    rows = int8.stdout.splitlines()
    agree = sum(a == b for a, b in zip(rows, ort.stdout.splitlines(), strict=True))
    assert agree >= 0.8 * len(rows)


@pytest.mark.skipif(BF16_HERE, reason="this CPU computes in bf16: the refusal cannot be shown")
def test_bf16_is_refused_with_one_line_on_a_cpu_without_it(export_dir, synth_root):
    result = _read(synth_root / "test", "--model", export_dir, "--engine", "openvino",
                   "--precision", "bf16")  # fmt: skip
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "bf16 only on CPUs with AVX512_BF16 or AMX" in result.stderr


@pytest.mark.skipif(not BF16_HERE, reason="this CPU has no bf16 (AVX512_BF16 or AMX)")
def test_bf16_reads_nearly_as_fp32(export_dir, synth_root):
    fp32 = _read(synth_root / "test", "--model", export_dir)
    bf16 = _read(synth_root / "test", "--model", export_dir, "--engine", "openvino",
                 "--precision", "bf16")  # fmt: skip
    assert bf16.exit_code == 0 and "CPU bf16" in bf16.stderr
    rows = bf16.stdout.splitlines()
    agree = sum(a == b for a, b in zip(rows, fp32.stdout.splitlines(), strict=True))
    assert agree >= 0.8 * len(rows)


def test_precision_is_explicit_and_checked():
    assert compile_config("fp32", 1, None) == {
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",
    }
    assert compile_config("int8", 8, 2) == {
        "INFERENCE_PRECISION_HINT": "f32",  # what is not quantized runs in fp32
        "PERFORMANCE_HINT": "THROUGHPUT",
        "INFERENCE_NUM_THREADS": "2",
    }
    assert compile_config("bf16", 8, None)["INFERENCE_PRECISION_HINT"] == "bf16"
    assert [(s.start, s.stop) for s in chunks(8, 3)] == [(0, 3), (3, 5), (5, 8)]
    assert [(s.start, s.stop) for s in chunks(1, 4)] == [(0, 1)]


def test_an_int8_file_cannot_be_read_as_another_precision(openvino_export, synth_root):
    out, _ = openvino_export
    result = _read(synth_root / "test", "--model", out / "model.int8.xml", "--precision", "fp32")
    assert result.exit_code == 2 and "an int8 file" in result.stderr
    result = _read(synth_root / "test", "--model", out / "model.xml", "--engine", "onnxruntime")
    assert result.exit_code == 2 and "does not read ir files" in result.stderr


def test_an_engine_failure_is_a_lost_batch_not_a_traceback(export_dir):
    backend = OpenVinoBackend(export_dir / "model.onnx", "fp32", batch=1)
    assert isinstance(backend, Backend)
    with pytest.raises(BackendError, match=r"OpenVINO \(fp32\) failed on a batch of 1 image"):
        backend(np.zeros((1, 3, 32, 32), np.uint8))  # not the model's canvas
    out = backend(np.zeros((1, 3, 64, 128), np.uint8))  # and it goes on
    assert out["boxes"].shape == (1, 20, 4)
    with pytest.raises(UserError, match="OpenVINO cannot load it"):
        OpenVinoBackend(export_dir / "model.json", "fp32")


def test_stdout_is_the_csv_and_a_missing_openvino_is_one_line(export_dir, synth_root):
    args = [str(synth_root / "test"), "--model", str(export_dir), "--engine", "openvino"]
    done = subprocess.run(
        [sys.executable, "-m", "digit_reader.runtime.cli", *args], capture_output=True, text=True
    )
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and lines[0] == "image_id,pred_label"
    assert all(ROW.match(line) for line in lines[1:]) and len(lines) == 13
    code = (
        "import sys; sys.modules['openvino'] = None; "
        "from digit_reader.runtime.cli import main; main()"
    )
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == (
        "error: openvino is not installed: pip install 'digit-reader[openvino]'"
    )


def _convert_changed(onnx_path: Path, xml_path: Path, dtype: int, change) -> None:
    """The real conversion of the graph with its largest initializer of `dtype` replaced by
    change(array): a wrong form that loads."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    found = [t for t in model.graph.initializer if t.data_type == dtype]
    weight = max(found, key=lambda t: np.prod(t.dims))
    weight.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(weight)), weight.name))
    wrong = xml_path.with_name("wrong.onnx")
    onnx.save(model, str(wrong))
    openvino_ir_convert(wrong, xml_path)
    wrong.unlink()


def _perturbed_convert(onnx_path: Path, xml_path: Path) -> None:
    """The fp32 graph with its largest weight (the box head's fc6) disturbed by noise."""
    import onnx

    def noisy(w):
        return w + np.random.default_rng(0).normal(0, 0.5 * float(w.std()), w.shape).astype(w.dtype)

    _convert_changed(onnx_path, xml_path, onnx.TensorProto.FLOAT, noisy)


openvino_ir_convert = openvino_ir.convert


def test_a_wrong_ir_fails_the_gate_and_writes_nothing(nano_run, export_dir, tmp_path, monkeypatch):
    out = tmp_path / "export"
    shutil.copytree(export_dir, out)  # a previous, good export lives here
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(openvino_ir, "convert", _perturbed_convert)
    result = CliRunner().invoke(export_main, [str(nano_run), "-o", str(out), "--openvino"])
    assert result.exit_code == 1
    assert "OpenVINO fp32 disagrees with the eager model" in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def _negated_int8_convert(onnx_path: Path, xml_path: Path) -> None:
    """model.int8.onnx with its largest int8 weight negated (the fp32 IR converted as it is)."""
    import onnx

    if onnx_path.name != "model.int8.onnx":
        return openvino_ir_convert(onnx_path, xml_path)

    def negated(w):
        return np.clip(-w.astype(np.int16), -127, 127).astype(np.int8)

    _convert_changed(onnx_path, xml_path, onnx.TensorProto.INT8, negated)


@pytest.mark.skipif(not VNNI_HERE, reason="this CPU has no VNNI: OpenVINO int8 is not gated here")
def test_a_wrong_int8_ir_fails_the_export_and_writes_nothing(
    openvino_export, nano_run, int8_args, bf16_args, tmp_path, monkeypatch
):
    out = tmp_path / "export"
    shutil.copytree(openvino_export[0], out)  # with its calibration cache: no recalibration
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(openvino_ir, "convert", _negated_int8_convert)
    args = [str(nano_run), "-o", str(out), "--openvino", *int8_args, *bf16_args]
    result = CliRunner().invoke(export_main, args)
    assert result.exit_code == 1, result.output
    assert "OpenVINO int8 reads" in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def _unmatchable_gate(export_dir: Path, nano_run: Path, synth_root: Path, tmp: Path):
    """A gate on the valid images whose reference no form can match: the fp32 reading with
    every score moved to the other side of 0.5."""
    from digit_reader.export.gate import Gate
    from digit_reader.runtime.agreement import backend_detections
    from digit_reader.train import samples

    found, _, _ = samples.sample_set(synth_root, 24, cache_dir=tmp)
    canvases, scales, sizes = samples.letterboxed([s.path for s in found], (64, 128))
    ov = OpenVinoBackend(export_dir / "model.onnx", "fp32", batch=8)
    ref = backend_detections(ov, canvases)
    ov.close()
    for d in ref:
        d.scores[:] = 1.0 - d.scores
    opts = exporter.ExportOptions(nano_run)
    return Gate([s.path.name for s in found], canvases, ref, 0.05, opts, None, scales, sizes)


@pytest.mark.skipif(not BF16_HERE, reason="this CPU has no bf16: its gate cannot run here")
def test_a_wrong_bf16_form_fails_its_gate(export_dir, nano_run, synth_root, tmp_path):
    from digit_reader.export.gate import ExportFailed

    gate = _unmatchable_gate(export_dir, nano_run, synth_root, tmp_path)
    bf16 = OpenVinoBackend(export_dir / "model.onnx", "bf16", batch=8)
    with pytest.raises(ExportFailed, match="OpenVINO bf16 reads"):
        gate.check(Form("openvino", "bf16", "model.onnx"), bf16)
    bf16.close()


@pytest.mark.skipif(not VNNI_HERE, reason="this CPU has no VNNI: OpenVINO int8 is not gated here")
def test_a_wrong_int8_form_fails_its_gate(
    openvino_export, export_dir, nano_run, synth_root, tmp_path
):
    from digit_reader.export.gate import ExportFailed

    gate = _unmatchable_gate(export_dir, nano_run, synth_root, tmp_path)
    xml = openvino_export[0] / "model.int8.xml"
    int8 = OpenVinoBackend(xml, "int8", batch=8)
    with pytest.raises(ExportFailed, match="OpenVINO int8 reads"):
        gate.check(Form("openvino", "int8", xml.name), int8)
    int8.close()


def test_the_card_records_every_openvino_form_for_the_benchmarks(openvino_export):
    from digit_reader.benchmarks.forms import exported_forms

    out, _ = openvino_export
    forms = [(c.form.engine, c.form.precision, c.path.name, c.skip) for c in exported_forms(out)]
    openvino = [f for f in forms if f[0] == "openvino"]
    assert [f[:3] for f in openvino] == [
        ("openvino", "fp32", "model.xml"),
        ("openvino", "bf16", "model.xml"),
        ("openvino", "int8", "model.int8.xml"),
    ]
    assert (openvino[1][3] is None) == BF16_HERE
    json.loads((out / "model.json").read_text())  # valid JSON, written last


SIGNAL_AFTER_TWO_BACKENDS = """
import gc, os, signal, sys
from digit_reader.runtime.openvino_backend import OpenVinoBackend
signal.signal(signal.SIGUSR1, lambda *a: print("handled", flush=True))
a = OpenVinoBackend(sys.argv[1], "fp32", batch=1, log=lambda m: None)
b = OpenVinoBackend(sys.argv[1], "fp32", batch=8, log=lambda m: None)
a.close(); del a; gc.collect(); b.close(); del b; gc.collect()  # not in reverse order
os.kill(os.getpid(), signal.SIGUSR1)
print("survived")
"""


def test_a_signal_after_backends_closed_out_of_order_is_handled(export_dir):
    """OpenVINO's CPU plugin swaps the thread's signal stack per Core: with a Core per backend,
    closing two backends out of order left it unmapped and the next signal was a SIGSEGV (it
    killed this suite at random). One shared Core keeps signals safe."""
    code = [sys.executable, "-c", SIGNAL_AFTER_TWO_BACKENDS, str(export_dir / "model.onnx")]
    done = subprocess.run(code, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.split() == ["handled", "survived"], done.stderr
