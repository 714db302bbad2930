"""`digit-bench parity|latency`: accuracy parity of every exported form against PyTorch, and
latency of every backend, precision and batch size. Tables on stdout, JSON and Markdown files
beside the export; progress on stderr. Exit 1 when parity fails, 2 on usage errors."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from digit_reader.runtime.command import Group

EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


def _batches(ctx, param, value: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter("a comma-separated list of batch sizes, e.g. 1,8,32") from None
    if not out or min(out) < 1:
        raise click.BadParameter("batch sizes must be positive")
    return out


@click.group(cls=Group)
def main():
    """Parity and latency benchmarks of exported models."""


def _exit(fn, *args) -> None:
    """Run a benchmark's main; its return value is the exit code (1: parity failed)."""
    sys.exit(fn(*args))


@main.command()
@click.option(
    "--run",
    "run_dir",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="digit-train run directory (or checkpoint): the PyTorch reference.",
)
@click.option(
    "--export",
    "export_dir",
    required=True,
    type=EXISTING_DIR,
    help="digit-export directory (model.json and its model files).",
)
@click.option("--data", required=True, type=EXISTING_DIR, help="HW2-layout root with labels.")
@click.option("--split", default="valid", show_default=True)
@click.option("--limit", type=click.IntRange(1), help="Only the first N images of the split.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where parity.json / parity.md go [default: the export directory].",
)
def parity(run_dir, export_dir, data, split, limit, device, out):
    """Every exported form against PyTorch eager, image by image.

    Exit 1 when an fp32 form disagrees with PyTorch on any image or an fp16 form on more than
    1 % of them.
    """
    from digit_reader.benchmarks import parity as bench

    _exit(bench.main, run_dir, export_dir, data, split, limit, device, out)


@main.command()
@click.option(
    "--export", "export_dir", required=True, type=EXISTING_DIR, help="digit-export directory."
)
@click.option(
    "--run",
    "run_dir",
    type=click.Path(exists=True, path_type=Path),
    help="Checkpoint for the PyTorch baseline [default: model.json's source].",
)
@click.option(
    "--backend",
    "forms",
    multiple=True,
    type=click.Choice(["onnxruntime fp32", "onnxruntime fp16", "TensorRT fp32", "TensorRT fp16"]),
    help="Only these forms (repeatable) [default: all; PyTorch eager always].",
)
@click.option("--batch", "batches", default="1,8,32", show_default=True, callback=_batches)
@click.option(
    "--iters",
    default=10,
    show_default=True,
    type=click.IntRange(1),
    help="Timed iterations per row (after 2 warm-up ones).",
)
@click.option(
    "--seconds",
    type=click.FloatRange(0, min_open=True),
    help="Keep timing each row at least this long.",
)
@click.option("--data", type=EXISTING_DIR, help="HW2-layout root for images [default: synthetic].")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where latency.json / latency.md go [default: the export directory].",
)
def latency(export_dir, run_dir, forms, batches, iters, seconds, data, device, out):
    """Latency and throughput per form, precision and batch, model-only and end to end."""
    from digit_reader.benchmarks import latency as bench

    _exit(bench.main, export_dir, run_dir, set(forms), batches, iters, seconds, data, device, out)
