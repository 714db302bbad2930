"""digit-bench: parity and latency outputs, the exit-code rules (a perturbed graph fails), the
speed benchmarks and re-rendered reports."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper
from PIL import Image

from digit_reader.benchmarks.cli import main
from digit_reader.runtime.modelcard import ModelCard

pytestmark = pytest.mark.slow


def _bench(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _perturbed_copy(export_dir, tmp_path, name: str, sigma: float):
    """The export with `name`'s largest weight (the box head's fc6) disturbed, re-registered in
    model.json so the reader accepts it: a wrong graph that still loads."""
    out = tmp_path / "perturbed"
    shutil.copytree(export_dir, out, ignore=shutil.ignore_patterns("parity.*", "latency.*"))
    model = onnx.load(str(out / name))
    weight = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    w = numpy_helper.to_array(weight)
    noise = np.random.default_rng(1).normal(0, sigma * float(np.abs(w).std()), w.shape)
    weight.CopyFrom(numpy_helper.from_array((w + noise).astype(w.dtype), weight.name))
    onnx.save(model, str(out / name))
    card = ModelCard.load(out / "model.json")
    card.add_file(out / name, card.files[name]["precision"])
    card.save(out / "model.json")
    return out


def test_parity_writes_json_and_markdown_and_passes(nano_run, export_dir, synth_root, tmp_path):
    result = _bench(
        "parity", "--run", nano_run, "--export", export_dir, "--data", synth_root, "--out", tmp_path
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "parity.json").read_text())
    rows = {r["form"]: r for r in report["rows"]}
    assert list(rows) == [
        "PyTorch eager",
        "onnxruntime fp32",
        "onnxruntime fp16",
        "TensorRT fp32",
        "TensorRT fp16",
    ]
    assert report["passed"] and report["images"] == 24
    eager, ort32, ort16 = rows["PyTorch eager"], rows["onnxruntime fp32"], rows["onnxruntime fp16"]
    assert ort32["status"] == "pass" and ort32["same_as_pytorch"] == 1.0
    assert ort32["accuracy"] == eager["accuracy"]
    assert abs(ort32["map"] - eager["map"]) < 1e-3 and ort32["box_dev_max"] < 0.5
    assert ort16["status"] == "pass" and ort16["same_as_pytorch"] >= 0.99
    assert ort16["size_mb"] < 0.6 * ort32["size_mb"]
    assert rows["TensorRT fp32"]["status"].startswith("skipped: ")
    md = (tmp_path / "parity.md").read_text()
    assert "| onnxruntime fp32 | pass |" in md and "PASS" in md
    assert ort32["pictures"] == [] and not (tmp_path / "parity" / "onnxruntime-fp32").exists()
    assert md.strip() in result.stdout
    assert _bench("report", tmp_path / "parity.json").stdout == md  # re-rendered from the JSON


def test_an_unlabelled_split_reports_agreement_only(nano_run, export_dir, synth_root, tmp_path):
    """HW2's test/ comes without test.json: accuracy and mAP are not available, not 0."""
    data = tmp_path / "hw2"
    shutil.copytree(synth_root / "test", data / "test")
    result = _bench(
        *("parity", "--run", nano_run, "--export", export_dir, "--data", data),
        *("--split", "test", "--out", tmp_path),
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "parity.json").read_text())
    ran = [r for r in report["rows"] if not r["status"].startswith("skipped")]
    assert [r["form"] for r in ran] == ["PyTorch eager", "onnxruntime fp32", "onnxruntime fp16"]
    for r in ran:
        assert (r["accuracy"], r["map"], r["map50"]) == (None, None, None), r["form"]
        assert r["same_as_pytorch"] >= 0.99
    assert report["labelled"] is False and report["images"] == 12 and report["passed"]
    md = (tmp_path / "parity.md").read_text()
    assert "| onnxruntime fp32 | pass | n/a | n/a |" in md
    assert "no labels: agreement with PyTorch only" in md


def test_a_perturbed_fp32_graph_fails_parity(nano_run, export_dir, synth_root, tmp_path):
    bad = _perturbed_copy(export_dir, tmp_path, "model.onnx", sigma=0.5)
    result = _bench("parity", "--run", nano_run, "--export", bad, "--data", synth_root)
    assert result.exit_code == 1
    report = json.loads((bad / "parity.json").read_text())
    row = next(r for r in report["rows"] if r["form"] == "onnxruntime fp32")
    assert not report["passed"] and row["status"] == "FAIL" and row["disagreements"]
    assert "onnxruntime fp32:" in result.stderr and "eager" in result.stderr
    md = (bad / "parity.md").read_text()
    assert "| onnxruntime fp32 | FAIL |" in md


def _differs(line: str) -> bool:
    """A disagreement line `NAME: eager '12', exported '1'; ...` with two different numbers."""
    eager = line.split("eager ")[1].split(",")[0]
    exported = line.split("exported ")[1].split(";")[0]
    return eager != exported


def test_fp16_fails_only_below_99_percent_agreement(nano_run, export_dir, synth_root, tmp_path):
    bad = _perturbed_copy(export_dir, tmp_path, "model.fp16.onnx", sigma=3.0)
    result = _bench("parity", "--run", nano_run, "--export", bad, "--data", synth_root)
    report = json.loads((bad / "parity.json").read_text())
    row = next(r for r in report["rows"] if r["form"] == "onnxruntime fp16")
    assert row["same_as_pytorch"] < 0.99 and row["status"] == "FAIL"
    assert result.exit_code == 1
    md = (bad / "parity.md").read_text()
    # a picture for each image read as another number, linked from parity.md
    differ = [line.split(":")[0] for line in row["disagreements"] if _differs(line)]
    assert differ and sorted(row["pictures"]) == sorted(
        f"parity/onnxruntime-fp16/{name}" for name in differ
    )
    for rel in row["pictures"]:
        assert f"]({rel})" in md
        picture = Image.open(bad / rel)
        half = picture.width // 2
        left, right = np.asarray(picture)[:, : half - 4], np.asarray(picture)[:, half + 4 :]
        assert left.shape[1] > 0 and not np.array_equal(left, right[:, : left.shape[1]])


def test_latency_reports_every_row_against_the_eager_baseline(export_dir, synth_root, tmp_path):
    result = _bench(
        "latency",
        "--export",
        export_dir,
        "--batch",
        "1,2",
        "--iters",
        "2",
        "--data",
        synth_root,
        "--out",
        tmp_path,
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "latency.json").read_text())
    ok = [r for r in report["rows"] if r["status"] == "ok"]
    assert [(r["form"], r["batch"]) for r in ok] == [
        (f, b) for f in ("PyTorch eager", "onnxruntime fp32", "onnxruntime fp16") for b in (1, 2)
    ]
    for r in ok:
        for part in ("model", "end_to_end"):
            s = r[part]
            assert 0 < s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] and s["iters"] >= 2
            assert s["per_image_p50_ms"] == pytest.approx(s["p50_ms"] / r["batch"])
            assert s["vs_eager"] > 0
    assert all(r["end_to_end"]["vs_eager"] == 1.0 for r in ok if r["form"] == "PyTorch eager")
    floor = report["floor"]
    assert floor["gmacs"] > 0 and set(floor["matmul_by_library"]) == {"torch", "onnxruntime"}
    assert floor["matmul_gflops"] == max(floor["matmul_by_library"].values()) > 1
    assert {"cpu", "cores", "versions"} <= set(report["machine"])
    skipped = [r for r in report["rows"] if r["status"] != "ok"]
    assert [r["form"] for r in skipped] == ["TensorRT fp32", "TensorRT fp16"]
    md = (tmp_path / "latency.md").read_text()
    assert "| onnxruntime fp32 | 2 |" in md and "(the fastest fp32 matmul here: " in md
    assert _bench("report", tmp_path / "latency.json").stdout == md


def test_usage_errors_exit_2(export_dir, tmp_path):
    assert _bench("latency", "--export", export_dir, "--batch", "x").exit_code == 2
    assert _bench("latency", "--export", tmp_path).exit_code == 2
    assert _bench("parity", "--export", export_dir).exit_code == 2


def test_report_refuses_other_json(tmp_path):
    (tmp_path / "other.json").write_text('{"rows": []}')
    result = _bench("report", tmp_path / "other.json")
    assert result.exit_code == 2 and "not a digit-bench result" in result.stderr


def test_read_speed_times_the_reader(export_dir, synth_root):
    result = _bench(
        "read-speed", synth_root / "test", "--model", export_dir / "model.onnx", "--repeats", "1"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 12 and report["batch_size"] == 8 and report["canvas"] == [64, 128]
    assert report["images_per_s"] > 0 and 0 <= report["outside_model_share"] < 1


def test_synth_speed_prints_one_json_line():
    # its own process: the benchmark pins the process that runs it to one core
    bench = Path(sys.executable).parent / "digit-bench"
    result = subprocess.run(
        [bench, "synth-speed", "--n", "4", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    report = json.loads(line)
    assert report["benchmark"] == "synth_speed" and report["images"] == 4
    assert report["images_per_s_median"] > 0 and "repeat 1/1" in result.stderr


def test_train_speed_usage_errors_exit_2(tmp_path):
    assert _bench("train-speed").exit_code == 2
    assert _bench("train-speed", "--to-accuracy", "0.5").exit_code == 2


def test_parity_lists_the_int8_forms_and_holds_them_to_the_int8_rule(
    nano_run, int8_export, synth_root, tmp_path
):
    args = ("--export", int8_export[0], "--data", synth_root, "--out", tmp_path)
    result = _bench("parity", "--run", nano_run, *args)
    report = json.loads((tmp_path / "parity.json").read_text())
    rows = {r["form"]: r for r in report["rows"]}
    assert list(rows) == [
        "PyTorch eager",
        "onnxruntime fp32",
        "onnxruntime int8",
        "TensorRT fp32",
        "TensorRT int8",
    ]
    eager, q = rows["PyTorch eager"], rows["onnxruntime int8"]
    keeps_rule = q["same_as_pytorch"] >= 0.98 and q["accuracy"] >= eager["accuracy"] - 0.01
    assert q["status"] == ("pass" if keeps_rule else "FAIL")
    assert result.exit_code == (0 if keeps_rule else 1)
    assert rows["TensorRT int8"]["status"].startswith("skipped: ")
    assert "accuracy at most 1 point(s) below" in report["rules"]["int8"]


def test_latency_shows_int8_beside_fp32_and_that_its_integer_kernels_ran(
    int8_export, synth_root, tmp_path
):
    args = ("--batch", "1,2", "--iters", "1", "--data", synth_root, "--out", tmp_path)
    result = _bench("latency", "--export", int8_export[0], *args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "latency.json").read_text())
    ok = [(r["form"], r["batch"]) for r in report["rows"] if r["status"] == "ok"]
    assert ("onnxruntime int8", 1) in ok and ("onnxruntime int8", 2) in ok
    integer = report["integer"]["onnxruntime int8"]["integer"]
    assert integer["share"] >= 0.95 and integer["kernels"]["QLinearConv"] >= 10
    md = (tmp_path / "latency.md").read_text()
    assert re.search(r"onnxruntime int8: (9\d|100)\.\d % of the Conv/Gemm/MatMul work", md)
    assert "onnxruntime int8 model call / fp32 (p50): batch 1 " in md
    assert _bench("report", tmp_path / "latency.json").stdout == md


def test_profile_says_where_the_time_goes_and_why_the_file_is_rewritten(int8_export, tmp_path):
    args = ("--runs", "1", "--as-is", "--out", tmp_path)
    result = _bench("profile", "--export", int8_export[0], *args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "profile.json").read_text())
    profiles = {p["form"]: p for p in report["profiles"]}
    assert list(profiles) == [
        "onnxruntime fp32",
        "onnxruntime int8",
        "onnxruntime int8 (file as is)",
    ]
    share = {form: p["integer"]["share"] for form, p in profiles.items()}
    assert share["onnxruntime fp32"] == 0 and share["onnxruntime int8"] >= 0.95
    assert share["onnxruntime int8 (file as is)"] < 0.5
    ops = {form: {r["op"] for r in p["by_op"]} for form, p in profiles.items()}
    assert "QLinearConv" in ops["onnxruntime int8"] and "Conv" in ops["onnxruntime fp32"]
    for p in profiles.values():
        assert p["total_ms"] == pytest.approx(sum(r["ms"] for r in p["by_op"]))
    md = (tmp_path / "profile.md").read_text()
    assert "| QLinearConv |" in md and "| total |" in md
    assert _bench("report", tmp_path / "profile.json").stdout == md


def test_memory_measures_each_form_and_batch_in_its_own_process(int8_export, tmp_path):
    result = _bench("memory", "--export", int8_export[0], "--batch", "1,16", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "memory.json").read_text())
    rows = {(r["form"], r["batch"]): r for r in report["rows"]}
    forms = ("onnxruntime fp32", "onnxruntime int8")
    assert list(rows) == [(f, b) for b in (1, 16) for f in forms]
    for r in rows.values():
        assert 0 < r["after_load_mb"] <= r["peak_mb"] < 8000
    for f in forms:  # a batch of 16 canvases needs more than one, in a process of its own
        assert rows[(f, 16)]["peak_mb"] > rows[(f, 1)]["peak_mb"]
    md = (tmp_path / "memory.md").read_text()
    assert "| onnxruntime int8 | 16 |" in md
    assert _bench("report", tmp_path / "memory.json").stdout == md
