"""`digit-read PATH... > pred.csv`: house numbers of images as HW2 CSV on stdout.

Exit codes: 0 every image read, 1 some inputs failed (each named on stderr), 2 usage.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from digit_reader.runtime import ray_read
from digit_reader.runtime.command import Command
from digit_reader.runtime.draw import Drawer
from digit_reader.runtime.output import ResultWriter
from digit_reader.runtime.preprocess import is_image_path
from digit_reader.runtime.reader import DEFAULT_BATCH, DEFAULT_WORKERS
from digit_reader.runtime.submission import natural_key
from digit_reader.runtime.triton_backend import is_triton_url


def collect_inputs(paths: tuple[str, ...], uris: bool = False) -> tuple[list[Path], list[str]]:
    """Files as given, directories' images in natural order; missing paths are failures.
    URIs (`scheme://...`) are kept as strings when `uris` (--ray reads them), else failures."""
    files, missing = [], []
    for p in paths:
        if ray_read.is_uri(p):
            if uris:
                files.append(p)
            else:
                missing.append(f"{p}: a URI; only --ray reads URIs")
            continue
        p = Path(p)
        if p.is_dir():
            files += sorted(
                (f for f in p.iterdir() if f.is_file() and is_image_path(f)), key=natural_key
            )
        elif p.exists():
            files.append(p)
        else:
            missing.append(f"{p}: no such file or directory")
    return files, missing


def _err(message: str) -> None:
    click.echo(message, err=True)


@click.command(cls=Command)
@click.argument("paths", nargs=-1, type=click.Path(path_type=str))
@click.option(
    "--model",
    "-m",
    type=click.Path(),
    help="model.onnx / model.engine, export dir, or triton://HOST:PORT/MODEL "
    "(triton+grpc:// for gRPC) [default: $DIGIT_MODEL]",
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
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
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
@ray_read.options
def main(
    paths,
    model,
    batch_size,
    threshold,
    json_path,
    device,
    workers,
    from_list,
    draw_dir,
    draw_all,
    sheet,
    **ray,
):
    """Read the house number in each image of PATH... (files or directories).

    Writes `image_id,pred_label` CSV to stdout (HW2's pred.csv: image_id = int(stem) for
    numeric names, leading zeros kept, -1 when no digit is found); progress and errors go to
    stderr. With --ray the same output comes from model actors on Ray Data.
    """
    paths, ray = ray_read.parse_options(paths, ray)
    if from_list:
        paths = (*paths, *(line.strip() for line in from_list if line.strip()))
    if not paths:
        raise click.UsageError("no inputs: give image files or directories")
    from digit_reader.runtime.reader import Reader

    if ray and is_triton_url(model or os.environ.get("DIGIT_MODEL", "")):
        raise click.UsageError(
            "--ray reads with a local model (an export dir or file): its "
            "actors are the servers; use triton:// without --ray"
        )
    if not ray:
        reader = Reader(
            model, device=device, batch_size=batch_size, threshold=threshold, workers=workers
        )
    files, failures = collect_inputs(paths, uris=bool(ray))
    for message in failures:
        _err(f"error: {message}")
    if not files:
        _err("error: no images found in " + ", ".join(paths))
        sys.exit(2)
    drawer = Drawer(draw_dir, draw_all, sheet) if (draw_dir or sheet) else None
    if ray:
        sys.exit(
            ray_read.read(
                files,
                len(failures),
                model,
                device,
                batch_size,
                threshold,
                json_path,
                drawer=drawer,
                **ray,
            )
        )
    _err(
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
        sys.stdout,
        json_path,
        len(failures),
        on_error=lambda m: _err(f"\n{m}" if bar else m),
        drawer=drawer,
        threshold=reader.threshold,
    )
    for path, pred in reader.iter_read(files):
        if bar:
            bar.update(1)
        writer.add(path, pred)
    if bar:
        bar.render_finish()
    sys.exit(writer.finish(time.perf_counter() - start))
