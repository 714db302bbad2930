"""`digit-read PATH... --ray [ADDRESS]`: bulk reading on Ray Data, one machine or a cluster.

Install the `ray` extra (`pip install 'digit-reader[cpu,ray]'`). Ray and pyarrow are imported
inside functions only: every module of the pipeline imports without them.

The pipeline, all scheduling left to Ray Data (no queue or worker pool of our own):

1. The driver lists the inputs (runtime/inputs.py: files, directories, `--from-list` paths and
   URIs) and numbers them: rows (idx, path).
2. Read stage and model stage (runtime/ray_stages.py): Ray Data tasks read the bytes, an actor
   pool of `--actors` runs the runtime's Reader on them; resources per runtime/ray_plan.py.
3. The driver restores input order by idx (runtime/ray_results.py `InOrder`: each image exactly
   once, whatever order blocks arrive in and however often Ray retried them) and hands the rows
   to the same ResultWriter as plain digit-read (pred.csv on stdout, --json, error lines,
   summary), plus Parquet shards for `--out DIR`.

Fault tolerance is Ray Data's: actors of an actor-pool map are restarted and their tasks
retried (max_restarts = max_task_retries = -1 by default in Ray 2.60); InOrder drops a row that
arrives twice and the driver names any image that never got a result. stdout carries only the
CSV: the CLI hands this module the data stream (runtime.console.data_stdout), and fd 1 itself
points at stderr, where Ray's driver prints its raylet messages.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import TextIO

from digit_reader.runtime.backends import engine_for, resolve_model
from digit_reader.runtime.console import err
from digit_reader.runtime.errors import ImageError
from digit_reader.runtime.inputs import is_uri
from digit_reader.runtime.modelcard import card_for
from digit_reader.runtime.output import ResultWriter
from digit_reader.runtime.ray_cluster import node_resources, start_ray, stop_ray
from digit_reader.runtime.ray_plan import Plan, plan
from digit_reader.runtime.ray_results import InOrder, ParquetShards, Result
from digit_reader.runtime.ray_stages import result_tables
from digit_reader.runtime.submission import image_id_for

PROGRESS_EVERY_S = 2.0


def read(
    files: list,
    n_failed: int,
    reader: dict,
    out: TextIO,
    json_path: str | None,
    ray: dict,
    drawer=None,
) -> int:
    """digit-read --ray: the whole run; returns the exit code (0 all read, 1 some failed).
    `reader` holds the Reader's options (model, device, batch_size, threshold, engine,
    precision), `ray` the --ray settings (address, actors, cpus, out_dir); `drawer`
    (runtime.draw.Drawer, --draw/--sheet) draws on the driver from the results."""
    # fail on the driver (exit 2) before starting Ray: an actor whose __init__ raises is not
    # restarted, it fails the whole job
    found = resolve_model(
        reader["model"], reader["device"], lambda m: None, reader["engine"], reader["precision"]
    )
    card, _ = card_for(found)
    engine = engine_for(found, reader["engine"])
    reader = reader | {"model": str(Path(reader["model"] or os.environ["DIGIT_MODEL"]).resolve())}
    temp, init_s = start_ray(ray["address"], ray["cpus"])
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so that Ray is shut down below
    try:
        node_cpus, gpus = node_resources()
        if reader["device"] == "auto":
            reader["device"] = "cuda" if gpus else "cpu"
        p = plan(node_cpus, gpus, ray["actors"], reader["device"])
        cluster = f"{sum(node_cpus):g} CPU, {gpus:g} GPU, {len(node_cpus)} nodes"
        _announce(len(files), f"{ray['address']} ({cluster}; ready in {init_s:.1f} s)", p, engine)
        err(f"  canvas {card.canvas[0]}x{card.canvas[1]}, batch {reader['batch_size']}")
        kept_at = card.threshold if reader["threshold"] is None else reader["threshold"]
        writer = ResultWriter(out, json_path, failed=n_failed, drawer=drawer, threshold=kept_at)
        shards = ParquetShards(ray["out_dir"]) if ray["out_dir"] else None
        start = time.perf_counter()
        _collect(files, p, reader, ray["address"].startswith("ray://"), writer, shards)
        if shards:
            shards.close()
        return writer.finish(time.perf_counter() - start)
    finally:
        stop_ray(temp)


def _announce(n: int, where: str, p: Plan, engine: str) -> None:
    import ray

    name = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}.get(engine, engine)
    threads = f" x {p.num_gpus:g} GPU" if p.num_gpus else f" ({name} threads {p.threads})"
    err(
        f"digit-read --ray: {n} images, Ray {ray.__version__} at {where}, "
        f"{p.actors} actors x {p.num_cpus:g} CPU{threads}"
    )


def _collect(files, p: Plan, reader: dict, client: bool, writer, shards) -> None:
    """Run the job and hand every image's result to the writer in input order; a job that
    fails as a whole is one error line, and each image it never answered is named."""
    items = [
        {"idx": i, "path": f if is_uri(f) else str(Path(f).resolve())} for i, f in enumerate(files)
    ]
    order = InOrder(len(files))
    start, last = time.perf_counter(), -math.inf
    try:
        for table in result_tables(items, p, reader["batch_size"], reader, client):
            for row in table.to_pylist():
                for idx, r in order.push(row["idx"], row):
                    _emit(files[idx], r, writer, shards)
            now = time.perf_counter()
            if now - last >= PROGRESS_EVERY_S:
                _progress(order.next, len(files), now - start)
                last = now
    except Exception as e:  # the job failed as a whole, not one image: say so, go on
        lines = str(e).strip().splitlines()
        writer.on_error(f"error: the Ray job failed: {lines[-1] if lines else repr(e)}")
    for idx, r in order.rest():
        _emit(files[idx], r, writer, shards)
    _progress(len(files), len(files), time.perf_counter() - start)


def _emit(path, r: dict | None, writer: ResultWriter, shards: ParquetShards | None) -> None:
    if r is None or r["error"] is not None:
        writer.add(path, ImageError(path, "no result from Ray" if r is None else r["error"]))
        return
    result = Result(r["number"], r["boxes"], r["scores"], r["digits"])
    writer.add(path, result)
    if shards:
        shards.add(image_id_for(path), path, result)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def _progress(done: int, total: int, seconds: float) -> None:
    err(f"digit-read --ray: {done}/{total} images, {done / max(seconds, 1e-9):.1f} images/s")
