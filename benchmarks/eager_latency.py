"""`digit-bench eager`: the PyTorch model's own inference latency, the baseline every exported
engine has to beat, without exporting anything: fp32 (TF32 off, as every parity check runs it)
and, on CUDA, fp16 autocast, per batch size; CUDA timings synchronise the device.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from digit_reader.benchmarks.machine import describe_machine, machine
from digit_reader.benchmarks.report import markdown_table, write
from digit_reader.runtime.console import err
from digit_reader.runtime.contract import resolve_device
from digit_reader.train import checkpoint
from digit_reader.train.eager import fp32_reference

WARMUP = 2
HEADERS = ["precision", "batch", "p50 ms", "p90 ms", "ms/img", "img/s"]


def time_model(model, images: list, device: torch.device, amp: bool, iters: int) -> list[float]:
    """Seconds of each of `iters` calls after WARMUP, the device synchronised around each."""
    autocast = torch.autocast(device.type, dtype=torch.float16) if amp else nullcontext()
    times = []
    with torch.no_grad(), autocast:
        for i in range(WARMUP + iters):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            model(images)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= WARMUP:
                times.append(time.perf_counter() - t)
    return times


def run(run_dir: Path, batches: list[int], iters: int, device: str) -> dict:
    device = resolve_device(device, torch.cuda.is_available())
    fp32_reference()
    model, cfg = checkpoint.load_model(run_dir, device)
    dev = torch.device(device)
    precisions = ["fp32", "fp16 autocast"] if dev.type == "cuda" else ["fp32"]
    rows = []
    for precision in precisions:
        for batch in batches:
            err(f"eager: {precision} batch {batch}")
            images = [torch.rand(3, *cfg.canvas, device=dev) for _ in range(batch)]
            times = time_model(model, images, dev, precision != "fp32", iters)
            p50, p90 = (float(np.percentile(times, q)) for q in (50, 90))
            rows.append(
                {"precision": precision, "batch": batch, "p50_ms": 1e3 * p50, "p90_ms": 1e3 * p90}
            )
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    return {
        "benchmark": "eager",
        "run": str(run_dir),
        "backbone": cfg.backbone,
        "canvas": list(cfg.canvas),
        "device": device,
        "rows": rows,
        "peak_gpu_mb": peak,
        "machine": machine(),
    }


def markdown(result: dict) -> str:
    table = [
        [
            r["precision"],
            r["batch"],
            round(r["p50_ms"], 2),
            round(r["p90_ms"], 2),
            round(r["p50_ms"] / r["batch"], 2),
            float(f"{1e3 * r['batch'] / r['p50_ms']:.3g}"),
        ]
        for r in result["rows"]
    ]
    m = result["machine"]
    head = (
        f"PyTorch eager inference, {result['backbone']} at canvas {result['canvas'][0]}x"
        f"{result['canvas'][1]} on {result['device']} ({describe_machine(m)}); fp32 with TF32 off."
    )
    return head + "\n\n" + markdown_table(HEADERS, table)


def main(run_dir, batches, iters, device, out) -> int:
    result = run(run_dir, batches, iters, device)
    md = markdown(result)
    run_dir = Path(run_dir)
    js, mdp = write(out or (run_dir if run_dir.is_dir() else run_dir.parent), "eager", result, md)
    print(md)
    err(f"eager: wrote {js} and {mdp}")
    return 0
