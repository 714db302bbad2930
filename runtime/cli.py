"""`digit-read PATH... > pred.csv`: house numbers of images as HW2 CSV on stdout.

Exit codes: 0 every image read, 1 some inputs failed (each named on stderr), 2 usage.
"""

from __future__ import annotations

import os
import sys
import time

import click

from digit_reader.runtime import ray_options
from digit_reader.runtime.backends import ENGINES
from digit_reader.runtime.command import Command, device_option
from digit_reader.runtime.console import data_stdout, err
from digit_reader.runtime.contract import PRECISIONS
from digit_reader.runtime.draw import Drawer
from digit_reader.runtime.inputs import collect_inputs
from digit_reader.runtime.output import ResultWriter
from digit_reader.runtime.reader import DEFAULT_BATCH, DEFAULT_WORKERS
from digit_reader.runtime.triton_url import is_triton_url

__all__ = ["collect_inputs", "main"]


@click.command(cls=Command)
@click.argument("paths", nargs=-1, type=click.Path(path_type=str))
@click.option(
    "--model",
    "-m",
    type=click.Path(),
    help="export dir, a model file (.onnx, .engine, .xml) or triton://HOST:PORT/MODEL "
    "(triton+grpc:// for gRPC) [default: $DIGIT_MODEL]",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="auto",
    show_default=True,
    help="what runs the model: auto = the export's TensorRT engine where it can run here, else "
    "ONNX Runtime (or the engine a file's type names); openvino needs the [openvino] extra",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    help="with an export dir: which of its files [fp32]; bf16 = OpenVINO on the fp32 file, on "
    "a CPU with bf16 [default: the file's]",
)
@click.option(
    "--batch-size", "-b", default=DEFAULT_BATCH, show_default=True, type=click.IntRange(1)
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    help="score to keep a digit [default: model.json's, 0.5]",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    help="also write COCO detection results (every detection) here",
)
@device_option("Where the model runs")
@click.option(
    "--threads",
    type=click.IntRange(1),
    help="CPU threads of ONNX Runtime or OpenVINO [all cores]",
)
@click.option(
    "--workers",
    default=DEFAULT_WORKERS,
    show_default=True,
    type=click.IntRange(1),
    help="threads that decode and letterbox images ahead of the model",
)
@click.option(
    "--from-list",
    type=click.File("r", encoding="utf-8"),
    metavar="FILE",
    help="also read the paths (or, with --ray, URIs) listed in FILE, one per line; - is stdin",
)
@click.option(
    "--draw",
    "draw_dir",
    type=click.Path(file_okay=False),
    help="also write each image with its boxes, digits, scores and number here (PNG, same name)",
)
@click.option("--draw-all", is_flag=True, help="with --draw: also the boxes below the threshold")
@click.option(
    "--sheet",
    type=click.Path(dir_okay=False),
    help="also write a contact sheet of the first 24 images' drawings here (PNG)",
)
@ray_options.options
def main(paths, from_list, draw_dir, draw_all, sheet, json_path, **options):
    """Read the house number in each image of PATH... (files or directories).

    Writes `image_id,pred_label` CSV to stdout (HW2's pred.csv: image_id = int(stem) for
    numeric names, leading zeros kept, -1 when no digit is found); progress and errors go to
    stderr. With --ray the same output comes from model actors on Ray Data.
    """
    out = data_stdout()  # whatever a library prints from here on goes to stderr
    paths, ray = ray_options.parse_options(paths, options)
    if from_list:
        paths = (*paths, *(line.strip() for line in from_list if line.strip()))
    if not paths:
        raise click.UsageError("no inputs: give image files or directories")
    reading = {k: options[k] for k in ("model", "device", "batch_size", "threshold")}
    reading |= {"engine": options["engine"], "precision": options["precision"]}
    if ray and is_triton_url(options["model"] or os.environ.get("DIGIT_MODEL", "")):
        raise click.UsageError(
            "--ray reads with a local model (an export dir or file): its "
            "actors are the servers; use triton:// without --ray"
        )
    reader = None if ray else _reader(reading, options["workers"], options["threads"])
    files, failures = collect_inputs(paths, uris=bool(ray))
    for message in failures:
        err(f"error: {message}")
    if not files:
        err("error: no images found in " + ", ".join(paths))
        sys.exit(2)
    drawer = Drawer(draw_dir, draw_all, sheet) if (draw_dir or sheet) else None
    if ray:
        from digit_reader.runtime import ray_read

        sys.exit(ray_read.read(files, len(failures), reading, out, json_path, ray, drawer))
    sys.exit(read_locally(reader, files, len(failures), out, json_path, drawer))


def _reader(reading: dict, workers: int, threads: int | None):
    from digit_reader.runtime.reader import Reader

    return Reader(**reading, workers=workers, threads=threads)


def read_locally(reader, files: list, n_failed: int, out, json_path, drawer) -> int:
    """Read `files` with `reader` into `out` (the CSV), in input order; the exit code."""
    err(
        f"digit-read: {len(files)} images, {reader.path.name} on {reader.backend.name}, "
        f"canvas {reader.canvas[0]}x{reader.canvas[1]}, batch {reader.batch_size}"
    )
    start = time.perf_counter()
    bar = (
        click.progressbar(length=len(files), file=sys.stderr, label="reading")
        if sys.stderr.isatty()
        else None
    )
    writer = ResultWriter(
        out,
        json_path,
        n_failed,
        on_error=lambda m: err(f"\n{m}" if bar else m),
        drawer=drawer,
        threshold=reader.threshold,
    )
    try:
        for path, pred in reader.iter_read(files):
            if bar:
                bar.update(1)
            writer.add(path, pred)
    finally:
        reader.close()
    if bar:
        bar.render_finish()
    return writer.finish(time.perf_counter() - start)


if __name__ == "__main__":
    main()
