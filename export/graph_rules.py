"""What TensorRT's ONNX importer accepts, checked on the exported graph before any engine build.

TensorRT cannot run on the development machines, so the graph is held to the importer's
documented rules instead (onnx-tensorrt docs/operators.md, kept in assets/tensorrt_ops.txt with
its source, and TensorRT's layer limits): only listed ops, no control flow, TopK with a constant
K < 3840 that does not exceed its input, at most 5000 candidate boxes per NonMaxSuppression
problem, RoiAlign with an explicit sampling ratio, uint8 only at the graph's input, and output
shapes fixed but for the batch axis. Explicit quantization (the int8 graph's
QuantizeLinear/DequantizeLinear) is symmetric int8 only: every Q/DQ carries a constant int8
zero point equal to 0 and a constant positive scale, scalar (per tensor) or 1-D (per channel).
A uint8 or int32 Q/DQ (ONNX Runtime's defaults for activations and biases) does not import.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

TOPK_MAX_K = 3840  # ITopKLayer: "K input must be less than 3840"
NMS_MAX_BOXES = 5000  # INMSLayer's default (and maximum) TopK box limit per batch item
CONTROL_FLOW = {"If", "Loop", "Scan"}
QDQ = {"QuantizeLinear", "DequantizeLinear"}


@cache
def tensorrt_ops() -> frozenset[str]:
    text = (
        resources.files("digit_reader.export")
        .joinpath("assets/tensorrt_ops.txt")
        .read_text("utf-8")
    )
    return frozenset(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(a.t)
                elif a.name in ("value_int", "value_ints"):
                    out[node.output[0]] = np.array(onnx.helper.get_attribute_value(a))
    return out


def _shapes(model: onnx.ModelProto) -> dict[str, list]:
    """Static dims as ints, symbolic or unknown ones as None, for every typed value."""
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    g = inferred.graph
    out = {}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            out[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return out


def violations(model: onnx.ModelProto) -> list[str]:
    """Every rule the graph breaks, one line each naming the node; [] when TensorRT-ready."""
    graph = model.graph
    allowed = tensorrt_ops()
    consts = _constants(graph)
    shapes = _shapes(model)
    found = []
    for node in graph.node:
        where = f"{node.op_type} node {node.name or node.output[0]!r}"
        if node.domain not in ("", "ai.onnx"):
            found.append(f"{where}: custom domain {node.domain!r}")
        elif node.op_type in CONTROL_FLOW:
            found.append(f"{where}: control flow (If/Loop/Scan) is not allowed")
        elif node.op_type not in allowed:
            found.append(f"{where}: not on onnx-tensorrt's supported-operator list")
        if node.op_type == "TopK":
            found += _topk(node, where, consts, shapes)
        elif node.op_type == "NonMaxSuppression":
            boxes = shapes.get(node.input[0])
            if not boxes or boxes[1] is None:
                found.append(f"{where}: the number of boxes is not static")
            elif boxes[1] > NMS_MAX_BOXES:
                found.append(
                    f"{where}: {boxes[1]} boxes per problem, TensorRT takes {NMS_MAX_BOXES}"
                )
        elif node.op_type == "RoiAlign":
            if "sampling_ratio" not in {a.name for a in node.attribute}:
                found.append(f"{where}: no explicit sampling_ratio (TensorRT would assume 1)")
        elif node.op_type == "ScatterND":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("reduction", b"none") not in (b"none", "none"):
                found.append(f"{where}: ScatterND reduction is not supported")
        elif node.op_type == "Cast":
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            if to == onnx.TensorProto.UINT8:
                found.append(f"{where}: uint8 is allowed only as a graph input or output")
        elif node.op_type in QDQ:
            found += _qdq(node, where, consts)
    found += _io_shapes(graph)
    return found


def _topk(node, where: str, consts: dict, shapes: dict) -> list[str]:
    k = consts.get(node.input[1])
    if k is None:
        return [f"{where}: K is not a constant"]
    k = int(np.asarray(k).reshape(-1)[0])
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
    sorted_ = next((a.i for a in node.attribute if a.name == "sorted"), 1)
    out = []
    if k >= TOPK_MAX_K:
        out.append(f"{where}: K = {k}, TensorRT needs K < {TOPK_MAX_K}")
    dims = shapes.get(node.input[0])
    n = dims[axis] if dims else None
    if n is None:
        out.append(f"{where}: the input's TopK axis is not static")
    elif k > n:
        out.append(f"{where}: K = {k} exceeds the {n} elements of its input")
    if not sorted_:
        out.append(f"{where}: TensorRT needs sorted=1")
    return out


def _qdq(node, where: str, consts: dict) -> list[str]:
    """TensorRT's explicit quantization: symmetric int8, constant positive scales."""
    out = []
    scale = consts.get(node.input[1])
    if scale is None:
        out.append(f"{where}: the scale is not a constant")
    elif scale.ndim > 1 or not np.all(scale > 0):
        out.append(f"{where}: the scale must be positive, a scalar or 1-D")
    zero = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if zero is None:
        out.append(f"{where}: no constant zero point (TensorRT needs an int8 zero point of 0)")
    elif zero.dtype != np.int8:
        out.append(f"{where}: {zero.dtype} zero point, TensorRT quantizes to int8 only")
    elif np.any(zero != 0):
        out.append(f"{where}: zero point not 0 (TensorRT quantizes symmetrically)")
    return out


def _io_shapes(graph) -> list[str]:
    """Inputs and outputs: the leading axis is the batch (the inputs' symbol), the rest static."""
    out = []
    batch = {d.dim_param for v in graph.input for d in v.type.tensor_type.shape.dim[:1]}
    for v in list(graph.input) + list(graph.output):
        dims = list(v.type.tensor_type.shape.dim)
        lead_ok = bool(dims) and (dims[0].HasField("dim_value") or dims[0].dim_param in batch)
        if not lead_ok or any(not d.HasField("dim_value") for d in dims[1:]):
            shown = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
            out.append(f"graph {v.name!r}: shape {shown} is not static beyond the batch axis")
    return out
