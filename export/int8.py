"""model.onnx -> model.int8.onnx: one explicitly quantized (QDQ) graph for TensorRT and ONNX
Runtime.

Tool: ONNX Runtime's `quantize_static` in QDQ format, not NVIDIA ModelOpt. Both write a graph
TensorRT takes and both read the demo's digits equally well, but ModelOpt's TensorRT-oriented
placement (no Q after a Conv) leaves ONNX Runtime's CPU provider nothing to fuse: 0 of the nano
graph's 26 Convs became int8 kernels, so it ran more slowly than fp32; quantize_static's graph,
in its CPU form (runtime/int8_cpu.py), fuses every quantized Conv, Gemm and Add.

Recipe, each choice measured on this project's models:
- nodes by the exporter's scopes: backbone + FPN, RPN head conv, box head (fc6, fc7). The RPN's
  cls_logits/bbox_pred and the box predictor stay fp32 (their outputs feed decoding, Sigmoid and
  Softmax directly; quantizing them cost ~1 point of same-number agreement for 0.2 % of the
  MACs), and so does everything outside those modules (decoding, TopK, thresholds, RoiAlign,
  NMS). Op types: Conv, Gemm, MatMul, and Add/MaxPool/Resize/Relu so activations stay 8-bit
  across residual adds, pooling and the FPN's resizes.
- before quantizing, ONNX Runtime's pre-processing folds the frozen BatchNorm (Mul/Add after
  each Conv in the ResNet exports) into the Conv; it keeps node names, so the scope choice made
  on model.onnx still applies.
- TensorRT's explicit quantization: int8 activations and weights, symmetric (zero point 0),
  per-channel weights, full range (reduce_range off: VNNI does not saturate), fp32 biases
  (TensorRT dequantizes int8, not int32), and no Q/DQ pair between a producer and its Relu
  (TensorRT fuses Conv+Relu+Q itself).
- calibration: max (the absolute maximum; MinMax; default) or percentile. A few outlier
  activations stretch max's ranges: on the demo's model the 99.99th percentile read 1 to 1.5
  points more images as eager, but its histograms are far slower at R101 (export/defaults.py).
  Not entropy: through quantize_static it silently equals max (ORT passes no bin options,
  leaving one candidate threshold), and a real entropy pass clips post-Relu tensors, which cost
  the TensorRT file 1.5 points of held-out agreement on nano.

The calibration cache (model.int8.calib.json, beside the graph) holds ONNX Runtime's ranges and
what they were computed from; a rebuild from it skips calibration and writes the same bytes.
The caller's model.onnx is never handed to a tool: it is copied into a work directory first.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from digit_reader.export import scopes
from digit_reader.export.defaults import CALIB_METHOD, CALIB_PERCENTILE
from digit_reader.runtime import atomic
from digit_reader.runtime.contract import INPUT_NAME
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.modelcard import sha256_of

INT8_MODULES = ("backbone", "rpn_head", "box_head")
KEEP_FP32 = ("rpn_head.cls_logits", "rpn_head.bbox_pred")  # + box_predictor, outside the modules
OP_TYPES = ("Conv", "Gemm", "MatMul", "Add", "MaxPool", "Resize", "Relu")
METHODS = ("max", "percentile")
CACHE_FORMAT = "digit-reader/int8-calibration@1"
RECIPE = 1  # bump when the node choice or quantizer options change: old caches recalibrate
NOT_ENTROPY = (
    "--calib-method entropy is not offered: through ONNX Runtime's quantize_static it equals "
    "max (one candidate threshold), and a real entropy pass clips post-Relu tensors (the "
    "TensorRT file lost 1.5 points of agreement on nano); use max or percentile"
)


@dataclass
class Calibration:
    """What the ranges are computed from: canvases through the preprocessing contract."""

    canvases: np.ndarray  # uint8 [N, 3, H, W]
    names: list[str]  # the images' file names
    origin: str  # where they come from
    method: str = CALIB_METHOD
    percentile: float = CALIB_PERCENTILE

    def provenance(self, model_sha256: str) -> dict:
        import onnxruntime

        return {
            "recipe": RECIPE,
            "model_sha256": model_sha256,
            "method": self.method,
            "percentile": self.percentile if self.method == "percentile" else None,
            "images": len(self.names),
            "image_names": self.names,
            "canvases_sha256": hashlib.sha256(np.ascontiguousarray(self.canvases)).hexdigest(),
            "origin": self.origin,
            "onnxruntime": onnxruntime.__version__,
        }


def check_method(method: str) -> None:
    if method == "entropy":
        raise UserError(NOT_ENTROPY, code=2)
    if method not in METHODS:
        raise UserError(f"--calib-method {method!r}: choose one of {', '.join(METHODS)}", code=2)


def int8_node_names(model: onnx.ModelProto) -> set[str]:
    return set(scopes.nodes_in(model, INT8_MODULES, KEEP_FP32))


def quantize(
    src: Path, dst: Path, cache: Path, calib: Calibration, work: Path, reuse: Path | None = None
) -> dict:
    """Write model.int8.onnx (`dst`) and its calibration cache (`cache`) from `src`.

    `reuse`: an earlier cache; used when it was made for the same model.onnx, recipe, method,
    canvases and onnxruntime, else calibration runs again. `src` is only ever copied.
    """
    check_method(calib.method)
    t0 = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    copy, pre = work / "model.onnx", work / "pre.onnx"
    shutil.copyfile(src, copy)
    provenance = calib.provenance(sha256_of(copy))
    names = int8_node_names(onnx.load(str(copy), load_external_data=False))
    if not names:
        raise UserError(f"{src}: no node carries the exporter's module scopes; cannot pick int8")
    with _quiet():
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(copy), str(pre), skip_symbolic_shape=True)
    chosen = onnx.load(str(pre)).graph.node
    nodes = [n.name for n in chosen if n.name in names and n.op_type in OP_TYPES]
    ranges = _cached_ranges(reuse, provenance)
    info = {"calibrated": ranges is None, "nodes": len(nodes)}
    if ranges is None:
        t1 = time.perf_counter()
        ranges = _calibrate(pre, calib, work)
        info["calibration_s"] = round(time.perf_counter() - t1, 1)
    ort_cache = work / "ranges.json"
    ort_cache.write_text(json.dumps(ranges), encoding="utf-8")
    quantized = work / "quantized.onnx"
    _quantize_static(pre, quantized, ort_cache, nodes, calib.method)
    model = onnx.load(str(quantized))
    info["relu_pairs_dropped"] = drop_qdq_before_relu(model)
    with atomic.atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
    atomic.write_json(cache, {"format": CACHE_FORMAT, **provenance, "ranges": ranges}, indent=1)
    info["seconds"] = round(time.perf_counter() - t0, 1)
    return info


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's quantization tools print progress (a line per calibration image) and log
    warnings; stdout carries digit-export's summary. Their errors still raise."""
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def _cached_ranges(path: Path | None, provenance: dict) -> dict | None:
    if path is None or not path.is_file():
        return None
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(cached, dict) or cached.get("format") != CACHE_FORMAT:
        return None
    same = all(cached.get(k) == v for k, v in provenance.items() if k != "origin")
    return cached.get("ranges") if same else None


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"max": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[name]


class _OneCanvas:
    """ONNX Runtime's calibration data reader over one canvas (batch 1)."""

    def __init__(self, canvas: np.ndarray):
        self.feeds = [{INPUT_NAME: np.ascontiguousarray(canvas[None])}]

    def get_next(self):
        return self.feeds.pop() if self.feeds else None


def _calibrate(pre: Path, calib: Calibration, work: Path) -> dict:
    """ONNX Runtime's ranges for every tensor the quantizer may need, one canvas at a time (an
    800x1344 canvas's intermediate tensors are ~4 GB), as its JSON cache holds them."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    options = {"symmetric": True}
    if calib.method == "percentile":
        options |= {"percentile": calib.percentile, "num_bins": 2048}
    with _quiet():
        calibrator = create_calibrator(
            pre,
            list(OP_TYPES),
            augmented_model_path=str(work / "augmented.onnx"),
            calibrate_method=_method(calib.method),
            providers=["CPUExecutionProvider"],
            extra_options=options,
        )
        for canvas in calib.canvases:
            calibrator.collect_data(_OneCanvas(canvas))
        save_tensors_data(calibrator.compute_data(), work / "calibrated.json")
    return json.loads((work / "calibrated.json").read_text(encoding="utf-8"))


def _quantize_static(pre: Path, dst: Path, ranges: Path, nodes: list[str], method: str) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with _quiet():
        quantize_static(
            str(pre),
            str(dst),
            None,  # the ranges come from the cache
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(OP_TYPES),
            nodes_to_quantize=nodes,
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=_method(method),
            calibration_cache_path=str(ranges),
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QuantizeBias": False,
            },
        )


def drop_qdq_before_relu(model: onnx.ModelProto) -> int:
    """X -> Q -> DQ -> Relu becomes X -> Relu where the pair serves only the Relu: TensorRT's
    placement (Conv -> Relu -> Q, fused by TensorRT); one requantisation less. Returns how many."""
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    dropped = []
    for relu in graph.node:
        dq = producer.get(relu.input[0]) if relu.op_type == "Relu" else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in inits:
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        if readers.get(dq.output[0]) != 1 or readers.get(q.output[0]) != 1:
            continue
        relu.input[0] = q.input[0]
        dropped += [q, dq]
    for node in dropped:
        graph.node.remove(node)
    return len(dropped) // 2
