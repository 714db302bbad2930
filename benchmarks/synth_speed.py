"""Images per second of the synthetic SVHN-like generator on one core, end to end.

    python -m benchmarks.synth_speed --n 500 [--repeats 3]

Each repeat runs `synthesize` for n train images into a fresh temporary directory: rendering,
PNG encoding, file writes and the json. The process is pinned to one CPU where the OS allows,
and a short warm-up fills the glyph cache first. Prints one JSON line on stdout.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import click

from digit_reader.benchmarks.machine import machine
from digit_reader.train.data.synth import SYNTH_VERSION, synthesize


def pin_one_core() -> bool:
    if not hasattr(os, "sched_setaffinity"):
        return False
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    return True


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--n", type=click.IntRange(1), default=500, show_default=True, help="images a run")
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
def main(n: int, repeats: int, seed: int) -> None:
    """Measure synthetic images per second on one core (median of the repeats)."""
    pinned = pin_one_core()
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(Path(tmp) / "warm", {"train": 50}, seed)
        for r in range(repeats):
            start = time.perf_counter()
            synthesize(Path(tmp) / f"run{r}", {"train": n}, seed + 1 + r)
            rates.append(n / (time.perf_counter() - start))
            click.echo(f"repeat {r + 1}/{repeats}: {rates[-1]:.1f} images/s", err=True)
    result = {
        "benchmark": "synth_speed",
        "synth_version": SYNTH_VERSION,
        "images": n,
        "repeats": repeats,
        "images_per_s_median": round(statistics.median(rates), 1),
        "images_per_s": [round(x, 1) for x in rates],
        "pinned_to_one_core": pinned,
        "machine": machine(),
    }
    click.echo(json.dumps(result))


if __name__ == "__main__":
    main()
