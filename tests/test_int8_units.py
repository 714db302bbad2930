"""int8 pieces on small hand-made graphs, run in ONNX Runtime: TensorRT's Q/DQ rule and the CPU
form the reader makes of a TensorRT-style int8 graph (what changes, what stays exact, and that
ONNX Runtime then really fuses int8 kernels)."""

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from digit_reader.export import graph_rules
from digit_reader.runtime.cpu_features import int8_saturates
from digit_reader.runtime.int8_cpu import cpu_form

RNG = np.random.default_rng(0)


def _init(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def _model(nodes, inits, shape=(1, 8, 6, 6), out_shape=None):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape or shape))],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _qdq(src, dst, scale, zero="zp"):
    return [
        helper.make_node("QuantizeLinear", [src, scale, zero], [f"{dst}_q"], name=f"{dst}_Q"),
        helper.make_node("DequantizeLinear", [f"{dst}_q", scale, zero], [dst], name=f"{dst}_DQ"),
    ]


def _conv_relu_pool(s_out: float) -> onnx.ModelProto:
    """TensorRT placement: x -> Q/DQ -> Conv (int8 weights, per channel) -> Relu -> Q/DQ ->
    MaxPool -> Q/DQ -> y, every zero point int8 0."""
    w = RNG.normal(0, 0.2, (8, 8, 3, 3)).astype(np.float32)
    w_scale = (np.abs(w).reshape(8, -1).max(1) / 127).astype(np.float32)
    w_q = np.round(w / w_scale[:, None, None, None]).astype(np.int8)
    inits = [
        _init("zp", np.int8(0)),
        _init("s_in", np.float32(4 / 127)),
        _init("s_out", np.float32(s_out)),
        _init("w_q", w_q),
        _init("w_scale", w_scale),
        _init("w_zp", np.zeros(8, np.int8)),
        _init("b", RNG.normal(0, 0.1, 8).astype(np.float32)),
    ]
    nodes = [
        *_qdq("x", "xd", "s_in"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], axis=0),
        helper.make_node("Conv", ["xd", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        *_qdq("r", "rd", "s_out"),
        helper.make_node("MaxPool", ["rd"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        *_qdq("p", "y", "s_out"),
    ]
    return _model(nodes, inits, out_shape=(1, 8, 3, 3))


def _run(model, x, optimized=None):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if optimized:
        options.optimized_model_filepath = str(optimized)
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _ops(path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _cpu(model, unsigned_weights=False):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out, cpu_form(out, unsigned_weights)


def test_tensorrt_rule_takes_only_symmetric_int8_qdq():
    ok = _conv_relu_pool(0.05)
    assert graph_rules.violations(ok) == []

    for zero, message in (
        (np.uint8(0), "uint8 zero point"),
        (np.int8(3), "zero point not 0"),
        (np.int32(0), "int32 zero point"),
    ):
        bad = _conv_relu_pool(0.05)
        bad.graph.initializer.remove(next(t for t in bad.graph.initializer if t.name == "zp"))
        bad.graph.initializer.append(_init("zp", zero))
        found = graph_rules.violations(bad)
        assert found and all(message in v for v in found), found
        assert {v.split(" node ")[0] for v in found} == {"QuantizeLinear", "DequantizeLinear"}

    negative = _conv_relu_pool(-0.05)
    found = graph_rules.violations(negative)
    assert len(found) == 4 and all("scale must be positive" in v for v in found)

    no_zero = _conv_relu_pool(0.05)
    no_zero.graph.node[0].input.pop()  # Q without a zero point quantizes to uint8
    assert any("no constant zero point" in v for v in graph_rules.violations(no_zero))


def test_cpu_form_folds_the_relu_carries_uint8_and_shifts_the_rest():
    model, counts = _cpu(_conv_relu_pool(0.05))
    assert counts == {
        "relu_folded": 1,
        "uint8_carried": 1,
        "shifted_by_128": 1,
        "unsigned_weights": 0,
    }
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert "Relu" not in ops and ops["QuantizeLinear"] == 3
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    zero = {n.name: inits[n.input[2]] for n in model.graph.node if len(n.input) > 2}
    assert zero["xd_Q"].dtype == np.uint8 and zero["xd_Q"] == 128  # input: shifted
    assert zero["rd_Q"].dtype == np.uint8 and zero["rd_Q"] == 0  # after Relu: uint8 from 0
    assert zero["y_Q"].dtype == np.uint8 and zero["y_Q"] == 0  # carried through MaxPool
    assert inits["w_q"].dtype == np.int8  # weights stay int8
    assert graph_rules.violations(model)  # the CPU form is not TensorRT's graph


def test_cpu_form_computes_what_the_file_does_where_int8_does_not_saturate():
    x = RNG.uniform(-4, 4, (1, 8, 6, 6)).astype(np.float32)
    file = _conv_relu_pool(0.2)  # 127 * 0.2 = 25.4: no Relu output reaches it
    cpu, _ = _cpu(file, int8_saturates())  # the form the reader makes on this CPU
    expected = _run(file, x)
    assert 0 < expected.max() < 127 * 0.2
    np.testing.assert_array_equal(_run(cpu, x), expected)


def test_without_vnni_the_weights_go_unsigned_and_compute_the_same():
    """On x86 without VNNI, ONNX Runtime's u8 x s8 kernels saturate a 16-bit intermediate; the
    CPU form's uint8 weights (zero point 128) hold exactly the same values and do not."""
    x = RNG.uniform(-4, 4, (1, 8, 6, 6)).astype(np.float32)
    file = _conv_relu_pool(0.2)
    cpu, counts = _cpu(file, unsigned_weights=True)
    assert counts["unsigned_weights"] == 1
    inits = {t.name: numpy_helper.to_array(t) for t in cpu.graph.initializer}
    dq = next(n for n in cpu.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits)
    w, zp = inits[dq.input[0]], inits[dq.input[2]]
    assert w.dtype == np.uint8 and np.all(zp == 128)
    weights = {t.name: numpy_helper.to_array(t) for t in file.graph.initializer}
    assert np.array_equal(w.astype(np.int16) - 128, weights[dq.input[0].removesuffix("_u8")])
    np.testing.assert_array_equal(_run(cpu, x), _run(file, x))


def test_cpu_form_keeps_what_int8_saturates_after_a_relu():
    """The one difference to the file: after a Relu, uint8 holds up to 255 steps, int8 127."""
    x = RNG.uniform(-4, 4, (1, 8, 6, 6)).astype(np.float32)
    file = _conv_relu_pool(0.01)
    cpu, _ = _cpu(file)
    as_is, rewritten = _run(file, x), _run(cpu, x)
    assert as_is.max() == pytest.approx(1.27) and rewritten.max() == pytest.approx(2.55)
    unsaturated = rewritten < 1.27
    np.testing.assert_array_equal(rewritten[unsaturated], as_is[unsaturated])


def test_the_shift_by_128_is_exact_even_where_int8_saturates():
    inits = [_init("zp", np.int8(0)), _init("s", np.float32(0.01)), _init("s2", np.float32(0.02))]
    nodes = [
        *_qdq("x", "a", "s"),
        helper.make_node("Add", ["a", "a"], ["b"]),
        *_qdq("b", "y", "s2"),
    ]
    file = _model(nodes, inits)
    cpu, counts = _cpu(file)
    assert counts["shifted_by_128"] == 2
    x = RNG.uniform(-3, 3, (1, 8, 6, 6)).astype(np.float32)  # beyond +-1.27: saturates
    np.testing.assert_array_equal(_run(cpu, x), _run(file, x))


def test_a_pair_before_the_relu_is_bypassed_with_the_relu():
    """ONNX Runtime's own placement (Conv -> Q/DQ -> Relu -> Q/DQ): the CPU form quantizes once,
    and the bypassed pair leaves no dead node behind."""
    model = _conv_relu_pool(0.05)
    nodes = list(model.graph.node)
    relu = next(n for n in nodes if n.op_type == "Relu")
    extra = _qdq("c", "cd", "s_out")
    relu.input[0] = "cd"
    del model.graph.node[:]
    for n in nodes:
        if n is relu:
            model.graph.node.extend(extra)
        model.graph.node.append(n)
    cpu, counts = _cpu(model)
    assert counts["relu_folded"] == 1
    q = next(n for n in cpu.graph.node if n.name == "rd_Q")
    assert q.input[0] == "c"
    assert not any(n.name.startswith("cd_") for n in cpu.graph.node)


def test_onnx_runtime_fuses_the_cpu_form_into_int8_kernels_and_not_the_file(tmp_path):
    x = RNG.uniform(-4, 4, (1, 8, 6, 6)).astype(np.float32)
    file = _conv_relu_pool(0.05)
    cpu, _ = _cpu(file)
    _run(file, x, tmp_path / "file.opt.onnx")
    _run(cpu, x, tmp_path / "cpu.opt.onnx")
    as_is, rewritten = _ops(tmp_path / "file.opt.onnx"), _ops(tmp_path / "cpu.opt.onnx")
    assert rewritten["QLinearConv"] == 1 and not rewritten["Relu"]
    assert as_is["QLinearConv"] == 0  # int8 activations and a Relu island: no fusion
