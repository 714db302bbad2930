"""Where ONNX Runtime's time goes, and how much of the model's arithmetic ran in int8 kernels.

A file that loads is no proof that int8 kernels ran: ONNX Runtime fuses a Q/DQ pair into an
integer kernel only where its rules allow, and runs the rest as DequantizeLinear + fp32. So
the evidence comes from ORT itself, from one session with its profiler on and its optimized
graph saved: the kernels that executed (profiler events, with their output shapes) and, for
each integer kernel (QLinearConv, QGemm, ...), its int8 weight in the optimized graph. Their
multiply-accumulates, over the MACs of every Conv/Gemm/MatMul of the file (ONNX shape
inference), is the integer share.
"""

from __future__ import annotations

import collections
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import shape_inference

from digit_reader.runtime.ort_backend import OrtBackend

# integer kernels computing a Conv/Gemm/MatMul -> index of their (int8/uint8) weight input
INTEGER_KERNELS = {
    "QLinearConv": 3,
    "QGemm": 3,
    "QLinearMatMul": 3,
    "ConvInteger": 1,
    "MatMulInteger": 1,
    "MatMulIntegerToFloat": 1,
    "DynamicQuantizeMatMul": 1,
}
WEIGHTED = {"Conv", "Gemm", "MatMul"}


def _dims(value) -> list[int | None]:
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def file_macs(path: Path) -> int:
    """Multiply-accumulates of every Conv, Gemm and MatMul of the ONNX file, for one image."""
    model = onnx.load(str(path))
    for value in model.graph.input:
        first = value.type.tensor_type.shape.dim[0]
        first.ClearField("dim_param")
        first.dim_value = 1
    model.graph.ClearField("value_info")
    inferred = shape_inference.infer_shapes(model, data_prop=True).graph
    shapes = {v.name: _dims(v) for v in [*inferred.value_info, *inferred.output]}
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}

    def weight(name: str) -> list[int] | None:
        node = producer.get(name)
        if node is not None and node.op_type == "DequantizeLinear":
            name = node.input[0]
        return inits.get(name)

    total = 0
    for node in model.graph.node:
        if node.op_type not in WEIGHTED:
            continue
        w, out = weight(node.input[1]), shapes.get(node.output[0])
        if w is None or not out or None in out:
            raise ValueError(f"{path}: no static shape for {node.op_type} {node.name!r}")
        total += int(np.prod(out)) * int(np.prod(w)) // _out_features(node, w)
    return total


def _out_features(node, w: list[int]) -> int:
    """Output channels/features of a weighted node, from its weight's shape."""
    if node.op_type in ("Conv", "QLinearConv", "ConvInteger"):
        return w[0]
    if node.op_type in ("Gemm", "QGemm"):
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return w[0] if trans_b else w[1]
    return w[-1]


def _node_events(events: list[dict], skip_runs: int) -> list[dict]:
    """The profiler's per-kernel events, without the first `skip_runs` runs (warm-up)."""
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    after = starts[skip_runs] if len(starts) > skip_runs else 0
    return [
        e
        for e in events
        if e.get("cat") == "Node"
        and e.get("name", "").endswith("_kernel_time")
        and e["ts"] >= after
    ]


def profile(
    path: Path,
    precision: str,
    canvases: np.ndarray,
    runs: int = 3,
    threads: int | None = None,
    int8_cpu_form: bool = True,
) -> dict:
    """ORT's CPU time by op type (ms per run, summed over its kernels) after one warm-up run,
    and the integer share of the Conv/Gemm/MatMul work in the last run. An int8 file runs in
    its CPU form, as the reader runs it, unless `int8_cpu_form` is False (the file as is)."""
    canvases = np.ascontiguousarray(canvases)
    with tempfile.TemporaryDirectory(prefix="digit-bench-profile-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"

        def configure(options):
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tmp) / "ort")
            options.optimized_model_filepath = str(optimized)

        backend = OrtBackend(
            path,
            "cpu",
            threads,
            precision=precision,
            int8_cpu_form=int8_cpu_form,
            configure=configure,
        )
        for _ in range(runs + 1):
            backend(canvases)
        events = json.loads(Path(backend.end_profiling()).read_text(encoding="utf-8"))
        graph = onnx.load(str(optimized)).graph
    kernels = _node_events(events, 1)
    by_op: dict[str, float] = collections.defaultdict(float)
    count: collections.Counter = collections.Counter()
    for e in kernels:
        op = e["args"].get("op_name", "?")
        by_op[op] += e["dur"] / 1e3 / runs
        count[op] += 1
    total = sum(by_op.values())
    rows = [
        {"op": op, "ms": ms, "share": ms / total if total else 0.0, "kernels": count[op] // runs}
        for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])
    ]
    integer = _integer_macs(_node_events(events, runs), graph)
    all_macs = file_macs(path) * len(canvases)
    return {
        "form": f"onnxruntime {precision}" + ("" if int8_cpu_form else " (file as is)"),
        "session": backend.name,
        "batch": len(canvases),
        "runs": runs,
        "total_ms": total,
        "by_op": rows,
        "integer": integer
        | {"total_gmacs": all_macs / 1e9, "share": integer["gmacs"] * 1e9 / all_macs},
    }


def _integer_macs(kernels: list[dict], graph) -> dict:
    """MACs of the integer Conv/Gemm/MatMul kernels that ran, and how many ran of each op."""
    nodes = {n.name: n for n in graph.node}
    inits = {t.name: list(t.dims) for t in graph.initializer}
    macs, ran = 0, collections.Counter()
    for e in kernels:
        op = e["args"].get("op_name")
        if op not in INTEGER_KERNELS:
            continue
        node = nodes[e["name"].removesuffix("_kernel_time")]
        w = inits[node.input[INTEGER_KERNELS[op]]]
        (out,) = e["args"]["output_type_shape"][0].values()
        macs += int(np.prod(out)) * int(np.prod(w)) // _out_features(node, w)
        ran[op] += 1
    return {"gmacs": macs / 1e9, "kernels": dict(ran)}


def integer_line(form: str, p: dict) -> str:
    i = p["integer"]
    ran = ", ".join(f"{n} {op}" for op, n in sorted(i["kernels"].items())) or "no integer kernel"
    return (
        f"{form}: {100 * i['share']:.1f} % of the Conv/Gemm/MatMul work ({i['gmacs']:.2f} of "
        f"{i['total_gmacs']:.2f} GMAC at batch {p['batch']}) ran in ONNX Runtime's integer "
        f"kernels ({ran}; its profiler and optimized graph)."
    )
