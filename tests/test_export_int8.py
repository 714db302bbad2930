"""digit-export --int8 on the session's (half-trained) nano model: the QDQ graph and where its
Q/DQ sit, the fp32 islands, TensorRT's rules, ONNX Runtime running it (and fusing int8 kernels
in the CPU form), model.json, the reader, the calibration cache, and the gate's failure path
(conftest's int8_args says why its gate is looser than the default)."""

import collections
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from digit_reader.export import exporter, gate, graph_rules, int8, scopes
from digit_reader.export.cli import main
from digit_reader.runtime import agreement as parity
from digit_reader.runtime.contract import parity_rule
from digit_reader.runtime.int8_cpu import cpu_form
from digit_reader.runtime.modelcard import ModelCard, card_for, sha256_of
from digit_reader.runtime.ort_backend import OrtBackend
from digit_reader.runtime.reader import Reader
from digit_reader.train import samples
from digit_reader.train.data.hw2 import load_split

pytestmark = pytest.mark.slow
ISLANDS = {"TopK", "NonMaxSuppression", "RoiAlign", "Softmax", "Sigmoid", "Exp", "Log"}


def _snapshot(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*"))}


@pytest.fixture(scope="module")
def qdq(int8_export):
    return onnx.load(str(int8_export[0] / "model.int8.onnx"))


@pytest.fixture(scope="module")
def fp32(int8_export):
    return onnx.load(str(int8_export[0] / "model.onnx"))


def _graph_maps(model):
    inits = {t.name for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers = collections.defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            consumers[i].append(n)
    return inits, producer, consumers


def test_export_writes_the_int8_graph_its_cache_and_its_card_entry(int8_export, nano_run):
    out, result = int8_export
    assert sorted(p.name for p in out.iterdir()) == [
        "model.int8.calib.json",
        "model.int8.onnx",
        "model.json",
        "model.onnx",
    ]
    card, entry = card_for(out / "model.int8.onnx")  # size and sha256 checked
    assert entry["precision"] == "int8" and entry["sha256"] == sha256_of(out / "model.int8.onnx")
    assert entry["calibration"] | {"origin": None} == {
        "images": 24,  # the session's data has 24 valid images
        "method": "max",
        "percentile": None,
        "origin": None,
        "cache": "model.int8.calib.json",
        "from_cache": False,
    }
    assert entry["images"] == 24 and 0.8 <= entry["agreement"] <= 1
    assert entry["accuracy"] >= entry["eager_accuracy"] - 0.1
    assert entry["parity_other_form"]["form"] == "file as is"
    assert "onnxruntime int8:" in result.stdout and "int8 quantization" in result.stdout
    assert (out / "model.int8.onnx").stat().st_size < 0.45 * (out / "model.onnx").stat().st_size


def test_quantizing_never_touches_its_input(export_dir, tmp_path):
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    shutil.copy(export_dir / "model.onnx", src_dir / "model.onnx")
    before = _snapshot(src_dir)
    canvases = np.zeros((2, 3, 64, 128), np.uint8)
    calib = int8.Calibration(canvases, ["a.png", "b.png"], "zeros")
    out = tmp_path / "out"
    int8.quantize(src_dir / "model.onnx", out / "q.onnx", out / "c.json", calib, tmp_path / "w")
    assert _snapshot(src_dir) == before  # byte-identical, and nothing written beside it
    assert (out / "q.onnx").is_file() and (out / "c.json").is_file()


def test_the_exporter_refuses_a_quantizer_that_changes_model_onnx(nano_run, tmp_path, monkeypatch):
    real = int8.quantize

    def rewrites_its_input(src, *args, **kwargs):
        info = real(src, *args, **kwargs)
        src.write_bytes(src.read_bytes() + b"\0")
        return info

    monkeypatch.setattr(int8, "quantize", rewrites_its_input)
    out = tmp_path / "export"
    opts = exporter.ExportOptions(nano_run, out=out, int8=True, calib_images=4, parity_images=4)
    with pytest.raises(exporter.ExportFailed, match="int8 quantization changed model.onnx"):
        exporter.run(opts)
    assert not out.exists()


def test_qdq_sits_only_around_the_quantized_op_types_and_modules(qdq, fp32):
    inits, producer, consumers = _graph_maps(qdq)
    ops = collections.Counter(n.op_type for n in qdq.graph.node)
    assert ops["QuantizeLinear"] > 10 and ops["DequantizeLinear"] > 20
    allowed = int8.int8_node_names(fp32)
    # weights: int8 behind a DQ, read only by Conv/Gemm nodes of the quantized modules
    weight_readers = [
        u
        for n in qdq.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits
        for u in consumers[n.output[0]]
    ]
    assert {u.op_type for u in weight_readers} == {"Conv", "Gemm"}
    assert all(u.name in allowed for u in weight_readers)
    assert len(weight_readers) == sum(
        n.op_type in ("Conv", "Gemm") and n.name in allowed for n in fp32.graph.node
    )
    # an op between a DQ and a Q (every computed input dequantized, every output quantized)
    between = [
        n
        for n in qdq.graph.node
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
        and all(producer[i].op_type == "DequantizeLinear" for i in n.input if i in producer)
        and all(u.op_type == "QuantizeLinear" for o in n.output for u in consumers[o])
        and n.output[0] in consumers
    ]
    assert {n.op_type for n in between} <= set(int8.OP_TYPES)
    assert {"Conv", "Add"} <= {n.op_type for n in between}
    # every Q quantizes the output of an allowed op, or the input of a Conv/Gemm behind its DQ
    # (the normalized image, the pooled RoI features)
    for q in (n for n in qdq.graph.node if n.op_type == "QuantizeLinear"):
        made_by = producer[q.input[0]]
        fed = {u.op_type for dq in consumers[q.output[0]] for u in consumers[dq.output[0]]}
        assert made_by.op_type in int8.OP_TYPES or fed & {"Conv", "Gemm"}, q.name
    # and every Relu of the quantized modules hands its output to a Q (Conv -> Relu -> Q)
    relus = [n for n in qdq.graph.node if n.op_type == "Relu" and n.name in allowed]
    assert relus and all(
        [u.op_type for u in consumers[r.output[0]]] == ["QuantizeLinear"] for r in relus
    )
    assert not any(producer[r.input[0]].op_type == "DequantizeLinear" for r in relus)


def test_the_fp32_islands_and_the_output_layers_stay_fp32(qdq, fp32):
    _, producer, consumers = _graph_maps(qdq)
    count = collections.Counter
    assert count(n.op_type for n in qdq.graph.node if n.op_type in ISLANDS) == count(
        n.op_type for n in fp32.graph.node if n.op_type in ISLANDS
    )
    for n in qdq.graph.node:
        if n.op_type in ISLANDS:  # never fed by a Q, never feeding one
            assert all(
                producer.get(i) is None or producer[i].op_type != "QuantizeLinear" for i in n.input
            )
            assert not any(u.op_type == "QuantizeLinear" for o in n.output for u in consumers[o])
    heads = set(scopes.nodes_in(fp32, ["rpn_head", "box_predictor"])) - int8.int8_node_names(fp32)
    head_nodes = [n for n in qdq.graph.node if n.name in heads and n.op_type in ("Conv", "Gemm")]
    assert len(head_nodes) == 8 + 2  # cls_logits, bbox_pred per FPN level; cls_score, bbox_pred
    inits = {t.name: t for t in qdq.graph.initializer}
    for n in head_nodes:
        assert inits[n.input[1]].data_type == onnx.TensorProto.FLOAT, n.name


def test_the_file_passes_tensorrt_rules_and_its_cpu_form_does_not(qdq):
    assert graph_rules.violations(qdq) == []
    zero_points = [
        numpy_helper.to_array(t) for t in qdq.graph.initializer if t.name.endswith("zero_point")
    ]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    cpu = onnx.ModelProto()
    cpu.CopyFrom(qdq)
    counts = cpu_form(cpu)
    assert counts["relu_folded"] >= 10 and counts["shifted_by_128"] > 0
    assert any("uint8 zero point" in v for v in graph_rules.violations(cpu))


def test_onnx_runtime_runs_int8_kernels_in_the_cpu_form(int8_export, qdq, tmp_path):
    def optimized(model, name):
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / name)
        options.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
        return collections.Counter(n.op_type for n in onnx.load(str(tmp_path / name)).graph.node)

    inits, _, consumers = _graph_maps(qdq)
    weighted = collections.Counter(
        u.op_type
        for n in qdq.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits
        for u in consumers[n.output[0]]
    )
    cpu = onnx.ModelProto()
    cpu.CopyFrom(qdq)
    cpu_form(cpu)
    fused, as_is = optimized(cpu, "cpu.onnx"), optimized(qdq, "file.onnx")
    assert fused["QLinearConv"] == weighted["Conv"] and fused["QGemm"] == weighted["Gemm"]
    assert fused["QLinearAdd"] >= 1 and not fused["Relu"]
    assert as_is["QLinearConv"] < weighted["Conv"] // 2  # why the reader rewrites the file


def test_the_reader_reads_the_int8_file_and_a_directory_means_fp32(int8_export, synth_root):
    out = int8_export[0]
    images = [s.path for s in load_split(synth_root, "test")]
    reader = Reader(out / "model.int8.onnx", device="cpu")
    assert reader.precision == "int8" and "int8 CPU form" in reader.backend.name
    numbers = [p.number for p in reader.read(images)]
    assert len(numbers) == len(images) and sum(n != "-1" for n in numbers) >= len(images) // 3
    fp32_reader = Reader(out, device="cpu")
    assert fp32_reader.path.name == "model.onnx" and fp32_reader.precision == "fp32"
    same = sum(a == b.number for a, b in zip(numbers, fp32_reader.read(images), strict=True))
    assert same >= len(images) - 2


def test_a_rebuild_from_the_calibration_cache_is_byte_identical(
    int8_export, int8_args, nano_run, tmp_path
):
    out = tmp_path / "export"
    shutil.copytree(int8_export[0], out)
    before = (out / "model.int8.onnx").read_bytes()
    args = [str(nano_run), "-o", str(out), *int8_args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "from the calibration cache" in result.stderr
    assert (out / "model.int8.onnx").read_bytes() == before
    assert ModelCard.load(out / "model.json").files["model.int8.onnx"]["calibration"]["from_cache"]

    # another method is another calibration; an export without --int8 drops the int8 files
    result = CliRunner().invoke(main, [*args, "--calib-method", "percentile"])
    assert result.exit_code == 0 and "(calibrated)" in result.stderr
    assert (out / "model.int8.onnx").read_bytes() != before
    assert CliRunner().invoke(main, [str(nano_run), "-o", str(out)]).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx"]


def test_a_bad_calibration_fails_the_gate_names_the_images_and_writes_nothing(
    int8_export, nano_run, tmp_path
):
    """Ranges at the median of |activation| clip half of every tensor: nothing is read."""
    out = tmp_path / "export"
    shutil.copytree(int8_export[0], out)
    before = _snapshot(out)
    bad = ["--calib-method", "percentile", "--calib-percentile", "50"]
    result = CliRunner().invoke(main, [str(nano_run), "-o", str(out), "--int8", *bad])
    assert result.exit_code == 1
    error = result.stderr[result.stderr.index("error: ") :]
    head, *lines, pictures = error.splitlines()
    assert "onnxruntime int8 reads" in head and "below 98 % (--int8-min-agreement)" in head
    assert pictures.startswith("pictures (eager left, onnxruntime int8 right): ")
    named = [line.strip().split(":")[0] for line in lines]
    valid = [s.path.name for s in load_split(samples.data_root_of(nano_run / "best.pt"), "valid")]
    assert named and set(named) <= set(valid) and len(named) == len(set(named))
    assert _snapshot(out) == before  # the earlier export, untouched


def test_the_accuracy_rule_fails_on_its_own():
    diffs = [parity.ImageDiff(f"{i}.png", "12", "12", 2) for i in range(50)]
    result = parity.Parity(diffs)
    rule = parity_rule("int8", 0.98, 0.01)
    gate.enforce("onnxruntime int8", rule, result, 0.05, (0.91, 0.92))
    with pytest.raises(exporter.ExportFailed) as e:
        gate.enforce("onnxruntime int8", rule, result, 0.05, (0.90, 0.915))
    assert "accuracy 0.900 is more than 1 point(s) below the eager model's 0.915" in str(e.value)
    assert "--int8-min-agreement" not in str(e.value)


def test_int8_usage_errors_exit_2(nano_run):
    result = CliRunner().invoke(main, [str(nano_run), "--int8", "--calib-method", "entropy"])
    assert result.exit_code == 2 and "entropy is not offered" in result.stderr
    assert "equals max" in result.stderr
    result = CliRunner().invoke(main, [str(nano_run), "--calib-images", "8"])
    assert result.exit_code == 2 and "--calib-images needs --int8" in result.stderr


def test_the_gate_runs_the_cpu_form_and_the_file(int8_export, synth_root, nano_run):
    """Both forms read the session's valid images nearly alike (the CPU form only keeps what
    int8 saturates after a Relu), and the CPU form is what a CPU session gets by default."""
    out = int8_export[0]
    paths = [s.path for s in load_split(synth_root, "valid")]
    canv = samples.canvases(paths, (64, 128))
    cpu = OrtBackend(out / "model.int8.onnx", "cpu", precision="int8")
    as_is = OrtBackend(out / "model.int8.onnx", "cpu", precision="int8", int8_cpu_form=False)
    assert cpu.cpu_form and not as_is.cpu_form
    a = parity.backend_detections(cpu, canv)
    b = parity.backend_detections(as_is, canv)
    result = parity.measure(b, a, [p.name for p in paths])
    assert result.agreement >= 0.9 and result.mean_box_dev < 0.5


def test_a_failing_int8_gate_calibrated_with_max_suggests_percentile(
    int8_export, nano_run, tmp_path
):
    strict = ["--int8", "--calib-images", "64", "--int8-min-agreement", "1"]
    result = CliRunner().invoke(main, [str(nano_run), "-o", str(tmp_path / "e"), *strict])
    if result.exit_code == 0:
        pytest.skip("the session's model reads every gate image in int8 as eager: nothing fails")
    assert result.exit_code == 1 and "--calib-method percentile is less stretched" in result.stderr
    assert not (tmp_path / "e").exists()
