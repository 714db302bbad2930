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

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from digit_reader.benchmarks import ort_profile
from digit_reader.benchmarks.forms import Form, exported_forms
from digit_reader.benchmarks.machine import machine, matmul_rates
from digit_reader.benchmarks.report import markdown_table, write
from digit_reader.export.parity import EagerBackend
from digit_reader.runtime.decode import DEFAULT_THRESHOLD
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.modelcard import CARD_NAME, ModelCard
from digit_reader.runtime.reader import decode_outputs, open_backend, prepare
from digit_reader.train import checkpoint, samples

WARMUP = 2


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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


def measure(backend, paths, canvas, sharpen, batch: int, iters: int, seconds) -> dict:
    files = [paths[i % len(paths)] for i in range(batch)]
    ready = [prepare(p, canvas, sharpen) for p in files]
    canv = np.ascontiguousarray(np.stack([p.canvas for p in ready]))
    model_only = _timed(lambda: backend(canv), iters, seconds)

    def end_to_end():
        prepared = [prepare(p, canvas, sharpen) for p in files]
        images = np.ascontiguousarray(np.stack([p.canvas for p in prepared]))
        decode_outputs(backend(images), prepared, DEFAULT_THRESHOLD)

    e2e = _timed(end_to_end, iters, seconds)
    return {"model": _stats(model_only, batch), "end_to_end": _stats(e2e, batch)}


def run(export_dir, run_dir, forms_wanted, batches, iters, seconds, data, device) -> dict:
    with tempfile.TemporaryDirectory(prefix="digit-bench-") as tmp:
        paths, origin = samples.sample_paths(data, max(batches), cache_dir=Path(tmp))
        return _run(export_dir, run_dir, forms_wanted, batches, iters, seconds, paths, device) | {
            "images": origin
        }


def _run(export_dir, run_dir, forms_wanted, batches, iters, seconds, paths, device) -> dict:
    card = ModelCard.load(export_dir / CARD_NAME)
    source = Path(run_dir) if run_dir else Path(card.source_checkpoint.get("path", ""))
    _log(f"latency: {len(paths)} images, canvas {card.canvas}, batches {batches}")
    rows, floor = [], None
    forms: list[tuple[str, str, object | None, str | None]] = []
    if source.exists():
        model, cfg = checkpoint.load_model(source, device)
        forms.append(
            ("PyTorch eager", "fp32", EagerBackend(model, card.max_detections, device), None)
        )
        macs = conv_linear_macs(model, card.canvas)
        rates = matmul_rates()
        rate = max(rates.values())
        floor = {
            "gmacs": macs / 1e9,
            "matmul_gflops": rate,
            "matmul_by_library": rates,
            "ms_per_image": 2 * macs / rate / 1e6,
        }
    else:
        forms.append(("PyTorch eager", "fp32", None, f"no checkpoint at {source} (pass --run)"))
    for form in exported_forms(export_dir, device):
        if forms_wanted and form.name not in forms_wanted:
            continue
        forms.append((form.name, form.precision, form, form.skip))
    baseline, integer = {}, {}
    for name, precision, backend, skip in forms:
        if skip:
            rows.append({"form": name, "precision": precision, "status": f"skipped: {skip}"})
            _log(f"latency: {name} skipped: {skip}")
            continue
        if isinstance(backend, Form):
            if name == "onnxruntime int8" and device == "cpu":
                _log(f"latency: {name}: integer kernels (ONNX Runtime's profiler, batch 1)")
                canvas = prepare(paths[0], card.canvas, card.sharpen).canvas[None]
                integer[name] = ort_profile.profile(backend.path, "int8", canvas, runs=1)
            backend = open_backend(backend.path, card.files[backend.path.name], device)
        for batch in batches:
            limit = getattr(backend, "max_batch", None)
            if limit and batch > limit:
                rows.append({"form": name, "batch": batch, "status": f"skipped: max batch {limit}"})
                continue
            _log(f"latency: {name} batch {batch}")
            r = measure(backend, paths, card.canvas, card.sharpen, batch, iters, seconds)
            row = {"form": name, "precision": precision, "batch": batch, "status": "ok", **r}
            if name == "PyTorch eager":
                baseline[batch] = row
            base = baseline.get(batch)
            if base:
                for part in ("model", "end_to_end"):
                    row[part]["vs_eager"] = row[part]["p50_ms"] / base[part]["p50_ms"]
            if floor:
                row["model"]["vs_floor"] = row["model"]["per_image_p50_ms"] / floor["ms_per_image"]
            rows.append(row)
    return {
        "benchmark": "latency",
        "export": str(export_dir),
        "canvas": list(card.canvas),
        "device": device,
        "batches": batches,
        "floor": floor,
        "rows": rows,
        "integer": integer,
        "machine": machine() | {"torch_threads": torch.get_num_threads()},
    }


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
        f"({mach['cpu']}, {mach['cores']} cores"
        + (f", {mach['gpu']}" if mach["gpu"] else "")
        + ")."
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


def int8_ratios(rows: list[dict]) -> list[str]:
    """One line per backend with an int8 row: its model call over fp32's, batch by batch."""
    p50 = {(r["form"], r["batch"]): r["model"]["p50_ms"] for r in rows if r["status"] == "ok"}
    lines = []
    for backend in ("onnxruntime", "TensorRT"):
        pairs = [
            (batch, ms / p50[(f"{backend} fp32", batch)])
            for (form, batch), ms in p50.items()
            if form == f"{backend} int8" and (f"{backend} fp32", batch) in p50
        ]
        if pairs:
            shown = ", ".join(f"batch {b} {ratio:.2f}x" for b, ratio in pairs)
            lines.append(f"{backend} int8 model call / fp32 (p50): {shown}.")
    return lines


def main(export_dir, run_dir, forms, batches, iters, seconds, data, device, out) -> int:
    if not (export_dir / CARD_NAME).is_file():
        raise UserError(f"{export_dir}: no {CARD_NAME}; pass a digit-export directory", code=2)
    result = run(export_dir, run_dir, forms, batches, iters, seconds, data, device)
    md = markdown(result)
    js, mdp = write(out or export_dir, "latency", result, md)
    print(md)
    _log(f"latency: wrote {js} and {mdp}")
    return 0
