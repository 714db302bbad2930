"""`digit-bench latency`: per form, precision and batch size, how long a batch takes.

Two timings per row, warm-up excluded: model-only (the backend call on ready canvases) and
end-to-end (file decode + letterbox + backend + threshold/sort/decode, serially, as one
request would run; runtime.reader.prepare and decode_outputs, the reader's own code). The
PyTorch eager model on the same canvases is the baseline row; every row carries its ratio to
the baseline at the same batch size, and its distance from the floor: the model's convolution
and matrix-product FLOPs divided by the fastest fp32 matmul rate measured on this machine in
this process (torch's and ONNX Runtime's; machine.matmul_rates).
On CUDA the eager model is timed with device synchronisation; ONNX Runtime and TensorRT return
host arrays, which includes the copy back.

An int8 form is set beside fp32 (its model-call ratio per batch), and for ONNX Runtime's int8
on the CPU the report says how much of the Conv/Gemm/MatMul work ran in integer kernels
(benchmarks/ort_profile.py): a fast int8 row could otherwise hide an fp32 fallback.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from digit_reader.benchmarks import inputs, ort_profile
from digit_reader.benchmarks.forms import exported_forms
from digit_reader.benchmarks.machine import describe_machine, machine, matmul_rates
from digit_reader.benchmarks.report import markdown_table, write
from digit_reader.runtime.console import err
from digit_reader.runtime.contract import CARD_NAME, EAGER, ENGINE_LABELS, Form, resolve_device
from digit_reader.runtime.decode import DEFAULT_THRESHOLD
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.modelcard import ModelCard
from digit_reader.runtime.reader import decode_outputs
from digit_reader.train import checkpoint, samples
from digit_reader.train.eager import EagerBackend

WARMUP = 2


def conv_linear_macs(model, canvas: tuple[int, int]) -> int:
    """Multiply-accumulates of every Conv2d and Linear for one canvas, counted with hooks."""
    total = [0]

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total[0] += output.numel() * k
        else:
            total[0] += output.numel() * module.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    try:
        with torch.no_grad():
            model([torch.zeros(3, *canvas)])
    finally:
        for h in handles:
            h.remove()
    return total[0]


def _timed(fn, iters: int, seconds: float | None) -> list[float]:
    for _ in range(WARMUP):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < iters or (seconds and time.perf_counter() - start < seconds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if seconds and len(times) >= iters and time.perf_counter() - start >= seconds:
            break
    return times


def _stats(times: list[float], batch: int) -> dict:
    p50, p90, p99 = (float(np.percentile(times, q)) for q in (50, 90, 99))
    return {
        "p50_ms": 1e3 * p50,
        "p90_ms": 1e3 * p90,
        "p99_ms": 1e3 * p99,
        "per_image_p50_ms": 1e3 * p50 / batch,
        "per_image_p90_ms": 1e3 * p90 / batch,
        "per_image_p99_ms": 1e3 * p99 / batch,
        "images_per_s": batch / p50,
        "iters": len(times),
    }


def measure(backend, paths, card, batch: int, iters: int, seconds) -> dict:
    files = inputs.batch_of(paths, batch)
    canv = inputs.canvases(card, files)
    model_only = _timed(lambda: backend(canv), iters, seconds)

    def end_to_end():
        ready = inputs.prepared(card, files)
        images = np.ascontiguousarray(np.stack([p.canvas for p in ready]))
        decode_outputs(backend(images), ready, DEFAULT_THRESHOLD)

    e2e = _timed(end_to_end, iters, seconds)
    return {"model": _stats(model_only, batch), "end_to_end": _stats(e2e, batch)}


def run(export_dir, run_dir, forms_wanted, batches, iters, seconds, data, device) -> dict:
    device = resolve_device(device, torch.cuda.is_available())
    card = ModelCard.load(export_dir / CARD_NAME)
    with tempfile.TemporaryDirectory(prefix="digit-bench-") as tmp:
        paths, origin = samples.sample_paths(data, max(batches), cache_dir=Path(tmp))
        err(f"latency: {len(paths)} images, canvas {card.canvas}, batches {batches}")
        source = Path(run_dir) if run_dir else Path(card.source_checkpoint.get("path", ""))
        forms, floor = _forms(export_dir, source, card, forms_wanted, device)
        rows, integer = [], {}
        for form, opener, skip in forms:
            if skip:
                rows.append(_labels(form) | {"status": f"skipped: {skip}"})
                err(f"latency: {form.label} skipped: {skip}")
                continue
            if (form.engine, form.precision, device) == ("onnxruntime", "int8", "cpu"):
                integer[form.label] = _integer_share(export_dir / form.file, paths[0], card)
            rows += [_row(form, opener, batch, paths, card, iters, seconds) for batch in batches]
    _ratios(rows, floor)
    return {
        "benchmark": "latency",
        "export": str(export_dir),
        "canvas": list(card.canvas),
        "device": device,
        "batches": batches,
        "floor": floor,
        "rows": rows,
        "integer": integer,
        "images": origin,
        "machine": machine() | {"torch_threads": torch.get_num_threads()},
    }


def _forms(export_dir: Path, source: Path, card, wanted: set, device: str):
    """([(form, opener(batch) -> Backend, why skipped)] with PyTorch eager first, the floor)."""
    if not source.exists():
        eager = [(EAGER, None, f"no checkpoint at {source} (pass --run)")]
        floor = None
    else:
        model, _ = checkpoint.load_model(source, device)
        eager = [(EAGER, lambda batch: EagerBackend(model, card.max_detections, device), None)]
        floor = _floor(model, card.canvas)
    exported = [
        (c.form, lambda batch, c=c: c.open(card, device, batch), c.skip)
        for c in exported_forms(export_dir, device)
        if not wanted or any(c.form.same_kind(w) for w in wanted)
    ]
    return eager + exported, floor


def _floor(model, canvas) -> dict:
    """The model's conv and matmul FLOPs at the fastest fp32 matmul rate measured here."""
    macs = conv_linear_macs(model, canvas)
    rates = matmul_rates()
    rate = max(rates.values())
    return {
        "gmacs": macs / 1e9,
        "matmul_gflops": rate,
        "matmul_by_library": rates,
        "ms_per_image": 2 * macs / rate / 1e6,
    }


def _integer_share(path: Path, image: Path, card) -> dict:
    err("latency: onnxruntime int8: integer kernels (ONNX Runtime's profiler, batch 1)")
    return ort_profile.profile(path, "int8", inputs.canvases(card, [image]), runs=1)


def _row(form: Form, opener, batch: int, paths, card, iters: int, seconds) -> dict:
    """One form at one batch size, opened as digit-read opens it at that batch (OpenVINO's
    hint follows the batch) and closed afterwards: no other engine's model is alive while one
    is timed."""
    backend = opener(batch)
    try:
        limit = getattr(backend, "max_batch", None)
        if limit and batch > limit:
            return _labels(form) | {"batch": batch, "status": f"skipped: max batch {limit}"}
        err(f"latency: {form.label} batch {batch}")
        r = measure(backend, paths, card, batch, iters, seconds)
    finally:
        backend.close()
    return _labels(form) | {"batch": batch, "status": "ok", **r}


def _labels(form: Form) -> dict:
    return {"form": form.label, "engine": form.engine, "precision": form.precision}


def _ratios(rows: list[dict], floor: dict | None) -> None:
    """Each row against the eager row of its batch, and the model call against the floor."""
    eager = {r["batch"]: r for r in rows if r["form"] == EAGER.label and r["status"] == "ok"}
    for row in rows:
        if row["status"] != "ok":
            continue
        base = eager.get(row["batch"])
        if base:
            for part in ("model", "end_to_end"):
                row[part]["vs_eager"] = row[part]["p50_ms"] / base[part]["p50_ms"]
        if floor:
            row["model"]["vs_floor"] = row["model"]["per_image_p50_ms"] / floor["ms_per_image"]


HEADERS = [
    "form",
    "batch",
    "model p50 ms",
    "model ms/img",
    "e2e p50 ms",
    "e2e p90 ms",
    "e2e p99 ms",
    "e2e ms/img",
    "e2e img/s",
    "e2e vs eager",
    "model vs floor",
]


def markdown(result: dict) -> str:
    table = []
    for r in result["rows"]:
        if r["status"] != "ok":
            label = f"{r['form']} ({r['status']})"
            table.append([label, r.get("batch")] + [None] * (len(HEADERS) - 2))
            continue
        m, e = r["model"], r["end_to_end"]
        table.append(
            [
                r["form"],
                r["batch"],
                round(m["p50_ms"], 2),
                round(m["per_image_p50_ms"], 2),
                round(e["p50_ms"], 2),
                round(e["p90_ms"], 2),
                round(e["p99_ms"], 2),
                round(e["per_image_p50_ms"], 2),
                float(f"{e['images_per_s']:.3g}"),
                None if "vs_eager" not in e else f"{e['vs_eager']:.2f}x",
                None if "vs_floor" not in m else f"{m['vs_floor']:.2f}x",
            ]
        )
    mach, f = result["machine"], result["floor"]
    head = (
        f"Latency at canvas {result['canvas'][0]}x{result['canvas'][1]} on {result['device']} "
        f"({describe_machine(mach)})."
    )
    if f:
        by = f.get("matmul_by_library") or {"torch": f["matmul_gflops"]}  # older reports: torch
        libraries = ", ".join(f"{k} {v:.0f}" for k, v in sorted(by.items(), key=lambda kv: -kv[1]))
        head += (
            f" Floor: {f['gmacs']:.2f} GMAC per image at {f['matmul_gflops']:.0f} GFLOP/s "
            f"(the fastest fp32 matmul here: {libraries}) = {f['ms_per_image']:.2f} ms per image."
        )
    notes = [ort_profile.integer_line(form, p) for form, p in result.get("integer", {}).items()]
    notes += int8_ratios(result["rows"])
    return head + "\n\n" + markdown_table(HEADERS, table) + "".join(f"\n\n{n}" for n in notes)


def _p50(rows: list[dict]) -> dict:
    """(engine, precision, batch) -> model-call p50 ms of every row that ran."""
    return {
        (r["engine"], r["precision"], r["batch"]): r["model"]["p50_ms"]
        for r in rows
        if r["status"] == "ok" and "engine" in r
    }


def _ratio_line(p50: dict, title: str, top: tuple, bottom: tuple) -> str | None:
    """ "title: batch 1 0.80x, ..." for (engine, precision) `top` over `bottom`, where both ran."""
    pairs = [
        (batch, ms / p50[(*bottom, batch)])
        for (engine, precision, batch), ms in p50.items()
        if (engine, precision) == top and (*bottom, batch) in p50
    ]
    if not pairs:
        return None
    return f"{title} (p50): " + ", ".join(f"batch {b} {r:.2f}x" for b, r in pairs) + "."


def int8_ratios(rows: list[dict]) -> list[str]:
    """One line per engine with an int8 row: its model call over fp32's, batch by batch; and
    OpenVINO's model call over ONNX Runtime's in each precision, bf16 over ONNX Runtime fp32."""
    p50 = _p50(rows)
    lines = [
        _ratio_line(p50, f"{ENGINE_LABELS[e]} int8 model call / fp32", (e, "int8"), (e, "fp32"))
        for e in ("onnxruntime", "openvino", "tensorrt")
    ]
    for precision in ("fp32", "int8"):
        title = f"OpenVINO {precision} model call / onnxruntime {precision}"
        lines.append(_ratio_line(p50, title, ("openvino", precision), ("onnxruntime", precision)))
    title = "OpenVINO bf16 model call / onnxruntime fp32"
    lines.append(_ratio_line(p50, title, ("openvino", "bf16"), ("onnxruntime", "fp32")))
    return [line for line in lines if line]


def main(export_dir, run_dir, forms, batches, iters, seconds, data, device, out) -> int:
    if not (export_dir / CARD_NAME).is_file():
        raise UserError(f"{export_dir}: no {CARD_NAME}; pass a digit-export directory", code=2)
    result = run(export_dir, run_dir, forms, batches, iters, seconds, data, device)
    md = markdown(result)
    js, mdp = write(out or export_dir, "latency", result, md)
    print(md)
    err(f"latency: wrote {js} and {mdp}")
    return 0
