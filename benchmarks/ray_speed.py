"""Images/s of plain digit-read's Reader and of `digit-read --ray` with 1 and 2 actors on the same
images, and what Ray costs: once per job, and per image (issue 13).

    digit-bench ray-speed --export NANO_EXPORT [--export MID_EXPORT] \\
        IMAGES... [--sizes 200,1000] [--batch-size 8] [--repeats 3] [--out DIR]

Per export (model.onnx on the CPU), each run on the first n images for every n of --sizes:
- plain: the Reader digit-read uses (all cores): Reader.iter_read over the images, after the
  model is open (opening it is model_start_s in the JSON).
- --ray, N actors: the pipeline `digit-read --ray` runs (read stage + actor pool sized by
  ray_plan.plan) on one local Ray instance of every CPU. ray.init is measured once and shown
  apart; a run's time is from building the dataset to the last row, so it includes starting
  the actors and their ONNX Runtime sessions.
- From the two sizes: a line time = fixed + n x per-image, so "fixed s" is what a job pays
  once (for --ray: actor start-up, scheduling) and "ms/image" what each further image costs;
  Ray's overhead is the difference to plain's, per job and per image.
One untimed --ray run on two batches comes first. Every --ray run must read the same number
for every image as plain. The median of --repeats runs counts. Writes ray_speed.json and
ray_speed.md (to --out) and prints the Markdown table.
"""

from __future__ import annotations

import statistics
import sys
import time
from functools import partial
from pathlib import Path

import click

from digit_reader.benchmarks.machine import describe_machine, machine
from digit_reader.benchmarks.report import markdown_table, write
from digit_reader.runtime.command import Command, positive_ints
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.inputs import collect_inputs
from digit_reader.runtime.ray_cluster import node_resources, start_ray, stop_ray
from digit_reader.runtime.ray_options import LOCAL
from digit_reader.runtime.ray_plan import Plan, plan
from digit_reader.runtime.ray_stages import result_tables
from digit_reader.runtime.reader import Reader


def plain(reader: Reader, files: list[Path]) -> tuple[float, list[str]]:
    t = time.perf_counter()
    numbers = [pred.number for _, pred in reader.iter_read(files)]
    return time.perf_counter() - t, numbers


def on_ray(export: Path, files: list[Path], batch_size: int, p: Plan):
    items = [{"idx": i, "path": str(Path(f).resolve())} for i, f in enumerate(files)]
    kwargs = {"model": str(export.resolve()), "device": "cpu", "batch_size": batch_size}
    numbers: list[str | None] = [None] * len(files)
    t = time.perf_counter()
    for table in result_tables(items, p, batch_size, {**kwargs, "threshold": None}, False):
        for row in table.to_pylist():
            numbers[row["idx"]] = row["number"]
    return time.perf_counter() - t, numbers


def timed(run, repeats: int) -> tuple[float, list[float], list]:
    """(median seconds, every run's seconds, the numbers read) of `repeats` runs."""
    runs = [run() for _ in range(repeats)]
    seconds = [s for s, _ in runs]
    return statistics.median(seconds), [round(s, 3) for s in seconds], runs[0][1]


def fit(sizes: list[int], seconds: list[float]) -> tuple[float, float]:
    """(fixed s, s per image) of the line through the smallest and the largest size."""
    per_image = (seconds[-1] - seconds[0]) / (sizes[-1] - sizes[0])
    return seconds[0] - per_image * sizes[0], per_image


def measure(
    exports: list[Path],
    files: list[Path],
    sizes: list[int],
    batch_size: int,
    actors: list[int],
    repeats: int,
) -> dict:
    temp, init_s = start_ray(LOCAL, None)
    import ray

    rows = []
    try:
        node_cpus, gpus = node_resources()
        for export in exports:
            t = time.perf_counter()
            reader = Reader(export, device="cpu", batch_size=batch_size)
            start_s = time.perf_counter() - t
            plans = [None] + [plan(node_cpus, gpus, k, "cpu") for k in actors]
            want: dict = {}
            base = _row(export, reader, None, (files, sizes, batch_size, repeats), want)
            base["model_start_s"] = round(start_s, 3)
            rows.append(base)
            for p in plans[1:]:
                row = _row(export, reader, p, (files, sizes, batch_size, repeats), want)
                row["overhead_fixed_s"] = round(row["fixed_s"] - base["fixed_s"], 3)
                overhead = row["ms_per_image"] - base["ms_per_image"]
                row["overhead_ms_per_image"] = round(overhead, 3)
                rows.append(row)
            reader.close()
    finally:
        stop_ray(temp)
    return {
        "benchmark": "ray_speed",
        "sizes": sizes,
        "batch_size": batch_size,
        "repeats": repeats,
        "ray_version": ray.__version__,
        "ray_init_s": round(init_s, 3),
        "rows": rows,
        "machine": machine(),
    }


def _row(export: Path, reader: Reader, p: Plan | None, work: tuple, want: dict) -> dict:
    """Plain digit-read (p None) or --ray with plan p over each size, its fit, and a check
    that --ray reads the same numbers as plain digit-read did (`want`)."""
    files, sizes, batch_size, repeats = work
    how = "plain digit-read" if p is None else "--ray"
    canvas = "x".join(map(str, reader.canvas))
    row = {
        "export": str(export),
        "canvas": canvas,
        "how": how,
        "actors": p.actors if p else None,
        "cpus_per_actor": p.num_cpus if p else None,
        "ort_threads": p.threads if p else reader.backend.threads,
        "model_start_s": None,
        "seconds": {},
        "seconds_all": {},
    }
    if p is not None:  # warm-up: the first actors of a job start cold
        on_ray(export, files[: 2 * batch_size], batch_size, p)
    for n in sizes:
        print(f"ray_speed: {canvas} {how} {row['actors'] or ''} n={n}", file=sys.stderr, flush=True)
        run = (
            partial(plain, reader, files[:n])
            if p is None
            else partial(on_ray, export, files[:n], batch_size, p)
        )
        median, every, numbers = timed(run, repeats)
        if p is None:
            want[n] = numbers
        elif numbers != want[n]:
            raise UserError(f"{export}: --ray with {p.actors} actors read other numbers")
        row["seconds"][n], row["seconds_all"][n] = round(median, 3), every
    fixed, per_image = fit(sizes, [row["seconds"][n] for n in sizes])
    row["images_per_s"] = round(sizes[-1] / row["seconds"][sizes[-1]], 2)
    row["fixed_s"], row["ms_per_image"] = round(fixed, 3), round(1000 * per_image, 3)
    return row


def markdown(result: dict) -> str:
    m, sizes = result["machine"], result["sizes"]
    head = (
        f"digit-read vs digit-read --ray, batch {result['batch_size']}, median of "
        f"{result['repeats']} runs, CPU ({describe_machine(m)}); Ray "
        f"{result['ray_version']}: starting the local instance took {result['ray_init_s']:.1f} s "
        "(not in the times below)."
    )
    headers = [
        "canvas",
        "how",
        "actors x CPU",
        "ORT threads",
        *(f"s for {n} images" for n in sizes),
        f"images/s ({sizes[-1]})",
        "fixed s",
        "ms/image",
        "Ray's fixed s",
        "Ray's ms/image",
    ]
    table = [
        [
            r["canvas"],
            r["how"],
            f"{r['actors']} x {r['cpus_per_actor']:g}" if r["actors"] else "–",
            r["ort_threads"],
            *(r["seconds"][n] for n in sizes),
            r["images_per_s"],
            r["fixed_s"],
            r["ms_per_image"],
            r.get("overhead_fixed_s"),
            r.get("overhead_ms_per_image"),
        ]
        for r in result["rows"]
    ]
    return head + "\n\n" + markdown_table(headers, table)


def _sizes(ctx, param, value: str) -> list[int]:
    sizes = sorted(set(positive_ints(ctx, param, value)))
    if len(sizes) < 2:
        raise click.BadParameter("two or more image counts, e.g. 200,1000")
    return sizes


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
@click.option("--sizes", default="200,1000", show_default=True, callback=_sizes)
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
def main(images, exports, sizes, batch_size, repeats, actors, out):
    """Images/s of digit-read and digit-read --ray (1 and 2 actors) on the same images."""
    files, missing = collect_inputs(images)
    if missing or len(files) < sizes[-1]:
        raise UserError("; ".join(missing) or f"{len(files)} images, want {sizes[-1]}", code=2)
    counts = [int(a) for a in actors.split(",") if a.strip()]
    result = measure(list(exports), files, sizes, batch_size, counts, repeats)
    md = markdown(result)
    write(out, "ray_speed", result, md)
    print(md)


if __name__ == "__main__":
    main()
