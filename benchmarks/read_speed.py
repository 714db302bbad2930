"""Throughput of the reader end to end, and the share of wall time spent outside the model.

    digit-bench read-speed --model EXPORT_DIR/model.onnx IMAGES_DIR [--batch-size 8]

"Outside the model" is everything the reader adds around the backend call: file decoding,
letterboxing (in worker threads), batching and decoding of the outputs.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from digit_reader.benchmarks.machine import machine
from digit_reader.runtime.inputs import collect_inputs
from digit_reader.runtime.reader import Reader


def measure(reader: Reader, files: list[Path], repeats: int) -> dict:
    model_seconds = [0.0]  # [0] collects the warm-up
    inner = reader.backend

    class Timed:
        name, max_batch = inner.name, inner.max_batch

        def __call__(self, batch):
            t = time.perf_counter()
            out = inner(batch)
            model_seconds[-1] += time.perf_counter() - t
            return out

    reader.backend = Timed()
    walls = []
    reader.read(files[: reader.batch_size])  # warm-up
    for _ in range(repeats):
        model_seconds.append(0.0)
        t = time.perf_counter()
        for _, result in reader.iter_read(files):
            assert not isinstance(result, Exception), result
        walls.append(time.perf_counter() - t)
    reader.backend = inner
    wall, model = statistics.median(walls), statistics.median(model_seconds[1:])
    return {
        "images": len(files),
        "batch_size": reader.batch_size,
        "wall_s": round(wall, 3),
        "images_per_s": round(len(files) / wall, 2),
        "model_s": round(model, 3),
        "outside_model_share": round(1 - model / wall, 4),
    }


def run(images, model, batch_size: int, repeats: int, limit: int | None) -> dict:
    """The reader (CPU) over every image found in `images`, timed `repeats` times."""
    files, _ = collect_inputs(images)
    files = files[:limit] if limit else files
    reader = Reader(model, device="cpu", batch_size=batch_size)
    result = {"model": str(model), "canvas": list(reader.canvas), **measure(reader, files, repeats)}
    result["machine"] = machine()
    return result
