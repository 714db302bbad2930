"""Images per second of the synthetic SVHN-like generator on one core, end to end.

    digit-bench synth-speed --n 500 [--repeats 3]

Each repeat runs `synthesize` for n train images into a fresh temporary directory: rendering,
PNG encoding, file writes and the json. The process is pinned to one CPU where the OS allows,
and a short warm-up fills the glyph cache first. digit-bench prints one JSON line on stdout.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from digit_reader.benchmarks.machine import machine
from digit_reader.train.data.synth import SYNTH_VERSION, synthesize


def pin_one_core() -> bool:
    if not hasattr(os, "sched_setaffinity"):
        return False
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    return True


def run(n: int, repeats: int, seed: int) -> dict:
    """Synthetic images per second on one core (median of the repeats); progress on stderr."""
    pinned = pin_one_core()
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(Path(tmp) / "warm", {"train": 50}, seed)
        for r in range(repeats):
            start = time.perf_counter()
            synthesize(Path(tmp) / f"run{r}", {"train": n}, seed + 1 + r)
            rates.append(n / (time.perf_counter() - start))
            print(f"repeat {r + 1}/{repeats}: {rates[-1]:.1f} images/s", file=sys.stderr)
    return {
        "benchmark": "synth_speed",
        "synth_version": SYNTH_VERSION,
        "images": n,
        "repeats": repeats,
        "images_per_s_median": round(statistics.median(rates), 1),
        "images_per_s": [round(x, 1) for x in rates],
        "pinned_to_one_core": pinned,
        "machine": machine(),
    }
