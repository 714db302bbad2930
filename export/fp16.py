"""model.onnx -> model.fp16.onnx: fp16 convolutions and matrix products, everything else fp32.

Precision travels in the graph (TensorRT 11 builds strongly typed networks only), so the fp16
file says exactly which nodes run in fp16: the nodes of the backbone + FPN, the RPN head, the
box head and the box predictor, i.e. Conv, Relu, MaxPool, the FPN's Add and Resize, Gemm.
Normalisation, TopK, anchors, box decoding, Sigmoid/Softmax, every threshold, RoiAlign and
NonMaxSuppression stay fp32, with one Cast at each boundary.

Converter: NVIDIA ModelOpt AutoCast (`convert_to_mixed_precision`), the tool TensorRT 11's
migration guide names for this. The nodes are chosen by name, from the exporter's module-scope
metadata (`pkg.torch.onnx.name_scopes`), and everything else is excluded: choosing by op type
alone leaves the anchor and box arithmetic (Add, Gather, Concat) in fp16, which measured up to
32 px of box error. `data_max=inf` turns off AutoCast's reference run, so the choice is a fixed
policy, not a function of calibration data. onnxconverter-common 1.16 was tried first and does
not convert this graph: it keeps the input's Cast(to=FLOAT) feeding fp16 nodes (ORT rejects
the model), hangs when Cast is blocked, and rounds blocked ops' outputs back to fp16.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import onnx

from digit_reader.export import scopes
from digit_reader.runtime import atomic
from digit_reader.runtime.errors import UserError

FP16_MODULES = ("backbone", "rpn_head", "box_head", "box_predictor")  # DeployableDetector's
MUST_STAY_FP32 = {"TopK", "NonMaxSuppression", "RoiAlign", "Softmax", "Sigmoid", "Exp", "Log"}


def fp16_node_names(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that belong to the fp16 modules, by their export scope."""
    return scopes.nodes_in(model, FP16_MODULES)


def fp16_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes of a converted graph that compute in fp16 (an fp16 output, Casts aside)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in list(inferred.graph.value_info) + list(inferred.graph.output)
    }
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    return [
        n
        for n in model.graph.node
        if n.op_type != "Cast" and any(types.get(o) == onnx.TensorProto.FLOAT16 for o in n.output)
    ]


def convert_file(src: Path, dst: Path) -> None:
    """Write the fp16 graph of `src` to `dst` atomically; graph inputs and outputs keep types."""
    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
        from modelopt.onnx.autocast.logging_config import configure_logging
    except ImportError:
        raise UserError(
            "--fp16 needs NVIDIA ModelOpt: pip install 'digit-reader[export]'", code=2
        ) from None
    names = fp16_node_names(onnx.load(str(src), load_external_data=False))
    if not names:
        raise UserError(f"{src}: no node carries the exporter's module scopes; cannot pick fp16")
    configure_logging("ERROR")
    logging.disable(logging.WARNING)  # AutoCast also warns on the root logger
    try:
        converted = convert_to_mixed_precision(
            onnx_path=str(src),
            low_precision_type="fp16",
            nodes_to_exclude=[".*"],  # everything fp32 ...
            nodes_to_include=[re.escape(n) + "$" for n in names],  # ... but these modules
            data_max=float("inf"),
            keep_io_types=True,
            providers=["cpu"],
        )
    finally:
        logging.disable(logging.NOTSET)
    # AutoCast's re-inferred value_info names unknown dims all "unk", which makes ONNX Runtime
    # share buffers between tensors of different sizes; ONNX Runtime infers shapes itself
    converted.graph.ClearField("value_info")
    wrong = sorted({n.op_type for n in fp16_nodes(converted)} & MUST_STAY_FP32)
    if wrong:
        raise UserError(f"fp16 conversion put {', '.join(wrong)} in fp16; they must stay fp32")
    with atomic.atomic_path(dst) as tmp:
        onnx.save(converted, str(tmp))
