"""`digit-read PATH... > pred.csv`: house numbers of images as HW2 CSV on stdout.

Exit codes: 0 every image read, 1 some inputs failed (each named on stderr), 2 usage.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import click

from digit_reader.runtime import atomic
from digit_reader.runtime.command import Command
from digit_reader.runtime.draw import Drawer
from digit_reader.runtime.errors import ImageError
from digit_reader.runtime.preprocess import is_image_path
from digit_reader.runtime.reader import DEFAULT_BATCH, DEFAULT_WORKERS
from digit_reader.runtime.submission import CSV_HEADER, coco_results, image_id_for, natural_key


def collect_inputs(paths: tuple[str, ...]) -> tuple[list[Path], list[str]]:
    """Files as given, directories' images in natural order; missing paths are failures."""
    files, missing = [], []
    for p in map(Path, paths):
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
def main(
    paths, model, batch_size, threshold, json_path, device, workers, draw_dir, draw_all, sheet
):
    """Read the house number in each image of PATH... (files or directories).

    Writes `image_id,pred_label` CSV to stdout (HW2's pred.csv: image_id = int(stem) for
    numeric names, leading zeros kept, -1 when no digit is found); progress and errors go to
    stderr.
    """
    if not paths:
        raise click.UsageError("no inputs: give image files or directories")
    from digit_reader.runtime.reader import Reader

    reader = Reader(
        model, device=device, batch_size=batch_size, threshold=threshold, workers=workers
    )
    files, failures = collect_inputs(paths)
    for message in failures:
        _err(f"error: {message}")
    if not files:
        _err("error: no images found in " + ", ".join(paths))
        sys.exit(2)
    _err(
        f"digit-read: {len(files)} images, {reader.path.name} on {reader.backend.name}, "
        f"canvas {reader.canvas[0]}x{reader.canvas[1]}, batch {reader.batch_size}"
    )
    drawer = Drawer(draw_dir, draw_all, sheet) if (draw_dir or sheet) else None
    out = sys.stdout
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    results, n_ok, n_bad = [], 0, len(failures)
    start = time.perf_counter()
    bar = (
        click.progressbar(length=len(files), file=sys.stderr, label="reading")
        if sys.stderr.isatty()
        else None
    )
    for path, pred in reader.iter_read(files):
        if bar:
            bar.update(1)
        if isinstance(pred, ImageError):
            n_bad += 1
            _err(f"\nerror: {pred}" if bar else f"error: {pred}")
            continue
        if drawer:
            try:
                drawer.add(path, pred)
            except (ImageError, OSError) as e:  # the file changed since it was read, disk full
                n_bad += 1
                _err(f"error: {path}: no drawing ({e})")
        n_ok += 1
        image_id = image_id_for(path)
        writer.writerow((image_id, pred.number))
        if json_path:
            results += coco_results(image_id, pred.boxes, pred.scores, pred.digits)
    out.flush()
    if bar:
        bar.render_finish()
    seconds = time.perf_counter() - start
    if json_path:
        atomic.write_text(json_path, json.dumps(results) + "\n")
    if drawer:
        drawer.close()
    _err(
        f"digit-read: {n_ok} read, {n_bad} failed in {seconds:.1f} s "
        f"({n_ok / max(seconds, 1e-9):.1f} images/s)"
        + (f"; COCO results in {json_path}" if json_path else "")
    )
    sys.exit(1 if n_bad else 0)
