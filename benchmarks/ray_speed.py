"""Images/s of plain digit-read's Reader and of `digit-read --ray` with 1 and 2 actors on the same
images, and what Ray costs per image (issue 13).

    python -m digit_reader.benchmarks.ray_speed --export NANO_EXPORT [--export MID_EXPORT] \\
        IMAGES... [--limit 200] [--batch-size 8] [--out DIR]

Per export (model.onnx on the CPU):
- plain: the Reader digit-read uses, all cores; start-up = opening the model (ORT session),
  read = Reader.iter_read over every image.
- --ray, N actors: the pipeline `digit-read --ray` runs (read stage + actor pool, sized by
  ray_read.plan) on one local Ray instance of every CPU. Ray's own start-up (ray.init) is
  measured once and reported separately; read = from building the dataset to the last row, so
  it includes starting the actors and their ORT sessions ("first result s" is when the first
  rows came back); "after the first result" = images/s from then to the last row.
- overhead per image = (--ray read s - plain read s) / images.
Every run's numbers are checked against plain's (same number for every image).
Writes ray_speed.json and ray_speed.md (to --out), prints the Markdown table.
"""

from __future__ import annotations

import os
import sys
import time
from functools import partial
from pathlib import Path

import click

from digit_reader.benchmarks.machine import machine
from digit_reader.benchmarks.report import markdown_table, write
from digit_reader.runtime import ray_read
from digit_reader.runtime.cli import collect_inputs
from digit_reader.runtime.command import Command
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.reader import Reader


def plain(export: Path, files: list[Path], batch_size: int) -> dict:
    t = time.perf_counter()
    reader = Reader(export, device="cpu", batch_size=batch_size)
    startup = time.perf_counter() - t
    t = time.perf_counter()
    numbers = [pred.number for _, pred in reader.iter_read(files)]
    read = time.perf_counter() - t
    return {"startup_s": startup, "read_s": read, "numbers": numbers, "canvas": reader.canvas}


def on_ray(export: Path, files: list[Path], batch_size: int, actors: int) -> dict:
    node_cpus, gpus = ray_read.node_resources()
    p = ray_read.plan(node_cpus, gpus, actors, "cpu")
    items = [{"idx": i, "path": str(Path(f).resolve())} for i, f in enumerate(files)]
    kwargs = {"model": str(export.resolve()), "device": "cpu", "batch_size": batch_size}
    numbers: list[str | None] = [None] * len(files)
    t = time.perf_counter()
    first = None
    for table in ray_read.result_tables(items, p, batch_size, {**kwargs, "threshold": None}, False):
        if first is None:
            first = (time.perf_counter(), table.num_rows)
        for row in table.to_pylist():
            numbers[row["idx"]] = row["number"]
    end = time.perf_counter()
    steady = (len(files) - first[1]) / max(end - first[0], 1e-9)
    return {
        "read_s": end - t,
        "first_result_s": first[0] - t,
        "steady_images_per_s": steady,
        "numbers": numbers,
        "num_cpus": p.num_cpus,
        "threads": p.threads,
    }


def median_run(run, repeats: int) -> dict:
    """The run with the median read time of `repeats`, with every read time kept."""
    runs = sorted((run() for _ in range(repeats)), key=lambda r: r["read_s"])
    return {**runs[len(runs) // 2], "read_s_all": [round(r["read_s"], 3) for r in runs]}


def measure(
    exports: list[Path], files: list[Path], batch_size: int, actors: list[int], repeats: int
) -> dict:
    temp, init_s = ray_read.start_ray(ray_read.LOCAL, None)
    import ray

    rows = []
    try:
        for export in exports:
            print(f"ray_speed: {export}: plain", file=sys.stderr, flush=True)
            base = median_run(partial(plain, export, files, batch_size), repeats)
            n = len(files)
            canvas = "x".join(map(str, base["canvas"]))
            rows.append(
                {
                    "export": str(export),
                    "canvas": canvas,
                    "how": "plain digit-read",
                    "actors": None,
                    "cpus_per_actor": None,
                    "ort_threads": os.cpu_count(),
                    "startup_s": round(base["startup_s"], 3),
                    "read_s": round(base["read_s"], 3),
                    "read_s_all": base["read_s_all"],
                    "images_per_s": round(n / base["read_s"], 2),
                    "first_result_s": None,
                    "steady_images_per_s": None,
                    "overhead_ms_per_image": None,
                }
            )
            for k in actors:
                print(f"ray_speed: {export}: --ray, {k} actors", file=sys.stderr, flush=True)
                r = median_run(partial(on_ray, export, files, batch_size, k), repeats)
                if r["numbers"] != base["numbers"]:
                    raise UserError(f"{export}: --ray with {k} actors read other numbers")
                rows.append(
                    {
                        "export": str(export),
                        "canvas": canvas,
                        "how": "--ray",
                        "actors": k,
                        "cpus_per_actor": r["num_cpus"],
                        "ort_threads": r["threads"],
                        "startup_s": None,
                        "read_s": round(r["read_s"], 3),
                        "read_s_all": r["read_s_all"],
                        "images_per_s": round(n / r["read_s"], 2),
                        "first_result_s": round(r["first_result_s"], 3),
                        "steady_images_per_s": round(r["steady_images_per_s"], 2),
                        "overhead_ms_per_image": round(
                            1000 * (r["read_s"] - base["read_s"]) / n, 2
                        ),
                    }
                )
    finally:
        ray_read.stop_ray(temp)
    return {
        "benchmark": "ray_speed",
        "images": len(files),
        "batch_size": batch_size,
        "repeats": repeats,
        "ray_version": ray.__version__,
        "ray_init_s": round(init_s, 3),
        "rows": rows,
        "machine": machine(),
    }


def markdown(result: dict) -> str:
    m = result["machine"]
    head = (
        f"digit-read vs digit-read --ray on {result['images']} images, batch "
        f"{result['batch_size']}, median of {result['repeats']} runs, CPU ({m['cpu']}, "
        f"{m['cores']} cores); Ray "
        f"{result['ray_version']}, local instance started in {result['ray_init_s']:.1f} s "
        "(not in the read times)."
    )
    headers = [
        "canvas",
        "how",
        "actors x CPU",
        "ORT threads",
        "model start s",
        "first result s",
        "read s",
        "images/s",
        "images/s after the first result",
        "Ray overhead ms/image",
    ]
    table = [
        [
            r["canvas"],
            r["how"],
            f"{r['actors']} x {r['cpus_per_actor']:g}" if r["actors"] else "–",
            r["ort_threads"],
            r["startup_s"] if r["startup_s"] is not None else "in read s",
            r["first_result_s"],
            r["read_s"],
            r["images_per_s"],
            r["steady_images_per_s"],
            r["overhead_ms_per_image"],
        ]
        for r in result["rows"]
    ]
    return head + "\n\n" + markdown_table(headers, table)


@click.command(cls=Command)
@click.argument("images", nargs=-1, required=True)
@click.option(
    "--export",
    "exports",
    multiple=True,
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="digit-export directory; repeat for another canvas (e.g. nano, then a mid-size one)",
)
@click.option("--limit", default=200, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1))
@click.option("--actors", default="1,2", show_default=True, help="actor counts to run")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="where ray_speed.json and ray_speed.md go",
)
def main(images, exports, limit, batch_size, repeats, actors, out):
    """Images/s of digit-read and digit-read --ray (1 and 2 actors) on the same images."""
    files, missing = collect_inputs(images)
    if missing or not files:
        raise UserError("; ".join(missing) or "no images found", code=2)
    counts = [int(a) for a in actors.split(",") if a.strip()]
    result = measure(list(exports), files[:limit], batch_size, counts, repeats)
    md = markdown(result)
    write(out, "ray_speed", result, md)
    print(md)


if __name__ == "__main__":
    main()
