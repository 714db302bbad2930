"""The CPU form of model.int8.onnx: the TensorRT-style int8 graph rewritten, in memory, into the
form ONNX Runtime's x86 CPU provider fuses into int8 kernels. The file itself is not changed.

model.int8.onnx is what TensorRT needs: symmetric int8 Q/DQ (zero point 0) everywhere. ONNX
Runtime's CPU provider runs that file only about as fast as fp32, for two reasons of its own:
on x86 its fused int8 kernels take uint8 activations (VNNI multiplies u8 x s8), and it converts
an int8 Q/DQ pair to uint8 only where the Q feeds exactly one DQ; and with zero point 0 a Relu
before a Q is not redundant to it, so every Relu stays an fp32 island (DQ -> Relu -> Q). Three
rewrites fix both, and ORT then fuses every quantized Conv, Gemm and Add:

1. Relu -> Q(int8, s, 0) becomes Q(uint8, s, 0) on the Relu's input, without the Relu: the
   uint8 clamp at 0 is the Relu. Not bit-exact: values above 127 s, which the int8 file
   saturates, now survive up to 255 s (the export gate runs both forms for that reason).
2. That uint8 form is carried through MaxPool and nearest/linear Resize (which keep values
   non-negative) when the Q after them has the same scale.
3. Every other activation Q/DQ pair becomes uint8 with zero point 128: exactly the same values.

Weights stay int8 (behind their DQ), biases fp32, on CPUs with VNNI. On x86 without it (AVX2
only) MLAS's u8 x s8 kernels saturate their 16-bit intermediates (runtime/cpu_features.py), so
there the weights become uint8 with zero point 128 (`unsigned_weights`): exactly the same
values, which MLAS multiplies without saturating (u8 x u8, widened to 16 bits first). onnx is
the only dependency (no torch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from digit_reader.runtime.cpu_features import int8_saturates

Q, DQ = "QuantizeLinear", "DequantizeLinear"
U8_ZERO, U8_MID = "int8_cpu_zero_point_u8_0", "int8_cpu_zero_point_u8_128"
NON_NEGATIVE_KEEPING = {"MaxPool", "Resize"}


class _Graph:
    """Producers, consumers and constants of a graph, refreshed after each rewrite."""

    def __init__(self, model: onnx.ModelProto):
        self.graph = model.graph
        self.refresh()

    def refresh(self) -> None:
        g = self.graph
        self.inits = {t.name: t for t in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in g.output}

    def value(self, name: str) -> np.ndarray | None:
        t = self.inits.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def zero_point(self, node) -> np.ndarray | None:
        return self.value(node.input[2]) if len(node.input) > 2 and node.input[2] else None

    def is_int8_zero(self, node) -> bool:
        zp = self.zero_point(node)
        return zp is not None and zp.dtype == np.int8 and zp.ndim == 0 and int(zp) == 0

    def dq_users_only(self, q) -> list | None:
        """The DQ nodes reading `q`, or None if anything else (or the graph's output) does."""
        users = self.consumers.get(q.output[0], [])
        if q.output[0] in self.outputs or not users or any(u.op_type != DQ for u in users):
            return None
        return users


def _set_zero_point(g: _Graph, q, name: str, changed: set) -> None:
    """Give `q` and every DQ reading it the zero point `name` (its type becomes the pair's)."""
    for node in [q, *g.consumers[q.output[0]]]:
        node.input[2] = name
    changed.add(q.output[0])


def _before_pair(g: _Graph, name: str) -> str:
    """X for a tensor made by X -> Q -> DQ that serves only this Relu, else the tensor itself:
    a Q/DQ pair right before the Relu (ONNX Runtime's placement; digit-export drops it) would
    quantize twice and keep the producer from fusing with the uint8 Q."""
    dq = g.producer.get(name)
    q = g.producer.get(dq.input[0]) if dq is not None and dq.op_type == DQ else None
    if q is None or q.op_type != Q or q.input[0] in g.inits:
        return name
    if len(g.consumers.get(name, [])) != 1 or len(g.consumers.get(q.output[0], [])) != 1:
        return name
    return q.input[0]


def _fold_relus(g: _Graph, changed: set) -> int:
    folded = []
    for relu in g.graph.node:
        if relu.op_type != "Relu" or relu.output[0] in g.outputs:
            continue
        users = g.consumers.get(relu.output[0], [])
        if len(users) != 1 or users[0].op_type != Q:
            continue
        q = users[0]
        if not g.is_int8_zero(q) or g.dq_users_only(q) is None:
            continue
        q.input[0] = _before_pair(g, relu.input[0])
        _set_zero_point(g, q, U8_ZERO, changed)
        folded.append(relu)
        changed.add(relu.output[0])
    for relu in folded:
        g.graph.node.remove(relu)
    g.refresh()
    _drop_unused_pairs(g)
    return len(folded)


def _drop_unused_pairs(g: _Graph) -> None:
    """Remove Q and DQ nodes whose output nothing reads any more (bypassed pairs)."""
    while dead := [
        n
        for n in g.graph.node
        if n.op_type in (Q, DQ) and not any(g.consumers.get(o) or o in g.outputs for o in n.output)
    ]:
        for n in dead:
            g.graph.node.remove(n)
        g.refresh()


def _keeps_non_negative(node) -> bool:
    if node.op_type == "Resize":
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"nearest")
        return mode in (b"nearest", b"linear")
    return node.op_type in NON_NEGATIVE_KEEPING


def _carry_unsigned(g: _Graph, changed: set) -> int:
    carried = 0
    progress = True
    while progress:  # a chain (MaxPool -> MaxPool) converts one step per pass
        progress = False
        for node in g.graph.node:
            if not _keeps_non_negative(node):
                continue
            dq = g.producer.get(node.input[0])
            users = g.consumers.get(node.output[0], [])
            if dq is None or dq.op_type != DQ or dq.input[2] != U8_ZERO or len(users) != 1:
                continue
            q = users[0]
            if q.op_type != Q or not g.is_int8_zero(q) or g.dq_users_only(q) is None:
                continue
            if not np.array_equal(g.value(q.input[1]), g.value(dq.input[1])):
                continue
            _set_zero_point(g, q, U8_ZERO, changed)
            carried += 1
            progress = True
    return carried


def _shift_signed(g: _Graph, changed: set) -> int:
    shifted = 0
    for q in g.graph.node:
        if q.op_type != Q or q.input[0] in g.inits:  # a quantized weight stays int8
            continue
        if g.is_int8_zero(q) and g.dq_users_only(q) is not None:
            _set_zero_point(g, q, U8_MID, changed)
            shifted += 1
    return shifted


def _unsign_weights(g: _Graph) -> int:
    """Every int8 weight behind a DQ as uint8 + 128 with zero point 128: the same values."""
    renamed: dict[str, str] = {}

    def unsigned(name: str) -> str:
        if name not in renamed:
            value = g.value(name).astype(np.int16) + 128
            renamed[name] = f"{name}_u8"
            g.graph.initializer.append(
                numpy_helper.from_array(value.astype(np.uint8), renamed[name])
            )
        return renamed[name]

    weights = 0
    for dq in g.graph.node:
        if dq.op_type != DQ or dq.input[0] not in g.inits or len(dq.input) < 3:
            continue
        w, zp = g.value(dq.input[0]), g.zero_point(dq)
        if w.dtype != np.int8 or zp is None or np.any(zp != 0):
            continue
        dq.input[0], dq.input[2] = unsigned(dq.input[0]), unsigned(dq.input[2])
        weights += 1
    g.refresh()
    return weights


def cpu_form(model: onnx.ModelProto, unsigned_weights: bool = False) -> dict[str, int]:
    """Rewrite `model` (a TensorRT-style int8 QDQ graph) in place into ONNX Runtime's CPU form;
    returns how many Relus were folded, uint8 pairs carried, pairs shifted by 128 and weights
    made unsigned (CPUs without VNNI: `unsigned_weights`)."""
    g = _Graph(model)
    g.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(0, np.uint8), U8_ZERO),
            numpy_helper.from_array(np.array(128, np.uint8), U8_MID),
        ]
    )
    g.refresh()
    changed: set[str] = set()
    counts = {
        "relu_folded": _fold_relus(g, changed),
        "uint8_carried": _carry_unsigned(g, changed),
        "shifted_by_128": _shift_signed(g, changed),
        "unsigned_weights": _unsign_weights(g) if unsigned_weights else 0,
    }
    # recorded types of the changed tensors are now wrong: ONNX Runtime infers them again
    kept = [v for v in g.graph.value_info if v.name not in changed]
    del g.graph.value_info[:]
    g.graph.value_info.extend(kept)
    return counts


def load_cpu_form(path: str | Path, unsigned_weights: bool | None = None) -> bytes:
    """model.int8.onnx as ONNX Runtime's CPU provider should get it on this CPU: serialized
    CPU form, weights unsigned where its int8 kernels would saturate (unless told)."""
    model = onnx.load(str(path))
    unsigned = int8_saturates() if unsigned_weights is None else unsigned_weights
    cpu_form(model, unsigned)
    return model.SerializeToString()
