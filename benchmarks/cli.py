"""`digit-bench`: accuracy parity of every exported form against PyTorch, latency of every
backend, precision and batch size, where ONNX Runtime's time goes, the reader's, generator's
and training loop's speed, and Markdown re-rendered from saved results. Tables and JSON on
stdout, result files beside the export, progress on stderr. Exit 1 when parity fails, 2 on
usage errors.

Each command imports its benchmark only when it runs, so `--help` needs no torch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from digit_reader.runtime.command import Group, device_option, positive_ints
from digit_reader.runtime.contract import ENGINE_LABELS, ENGINE_PRECISIONS, Form
from digit_reader.runtime.errors import UserError

EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
RUN_OR_CHECKPOINT = click.Path(exists=True, path_type=Path)
OUT_DIR = click.Path(file_okay=False, path_type=Path)
FORMS = [Form(e, p).label for e, precisions in ENGINE_PRECISIONS.items() for p in precisions]
EXPORT_DIR_OPTION = click.option(
    "--export", "export_dir", required=True, type=EXISTING_DIR, help="digit-export directory."
)
CPU_FORMS_OPTION = click.option(
    "--backend",
    "forms",
    multiple=True,
    type=click.Choice([f for f in FORMS if not f.startswith(ENGINE_LABELS["tensorrt"])]),
    callback=lambda ctx, param, value: {Form.parse(v) for v in value},
    help="Only these forms (repeatable) [default: every CPU form of the export].",
)


def run_option(text: str):
    return click.option("--run", "run_dir", required=True, type=RUN_OR_CHECKPOINT, help=text)


@click.group(cls=Group)
def main():
    """Benchmarks: parity and latency of exported models, reader, generator and training
    speed."""


def _exit(fn, *args) -> None:
    """Run a benchmark's main; its return value is the exit code (1: parity failed)."""
    sys.exit(fn(*args))


@main.command()
@run_option("digit-train run directory (or checkpoint): the PyTorch reference.")
@click.option(
    "--export",
    "export_dir",
    required=True,
    type=EXISTING_DIR,
    help="digit-export directory (model.json and its model files).",
)
@click.option(
    "--data",
    required=True,
    type=EXISTING_DIR,
    help="HW2-layout root; on a split without labels, agreement with PyTorch only.",
)
@click.option("--split", default="valid", show_default=True)
@click.option("--limit", type=click.IntRange(1), help="Only the first N images of the split.")
@device_option("Where PyTorch and the exported forms run")
@click.option(
    "--out", type=OUT_DIR, help="Where parity.json / parity.md go [default: the export directory]."
)
def parity(run_dir, export_dir, data, split, limit, device, out):
    """Every exported form against PyTorch eager, image by image.

    Exit 1 when an fp32 form disagrees with PyTorch on any image, an fp16 form on more than
    1 % of them, or an int8 form on more than 2 % (or, with labels, loses more than 1 point
    of accuracy).
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
    type=RUN_OR_CHECKPOINT,
    help="Checkpoint for the PyTorch baseline [default: model.json's source].",
)
@click.option(
    "--backend",
    "forms",
    multiple=True,
    type=click.Choice(FORMS),
    callback=lambda ctx, param, value: {Form.parse(v) for v in value},
    help="Only these forms (repeatable) [default: all; PyTorch eager always].",
)
@click.option("--batch", "batches", default="1,8,32", show_default=True, callback=positive_ints)
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
@device_option("Where PyTorch and the exported forms run")
@click.option(
    "--out",
    type=OUT_DIR,
    help="Where latency.json / latency.md go [default: the export directory].",
)
def latency(export_dir, run_dir, forms, batches, iters, seconds, data, device, out):
    """Latency and throughput per form, precision and batch, model-only and end to end."""
    from digit_reader.benchmarks import latency as bench

    _exit(bench.main, export_dir, run_dir, forms, batches, iters, seconds, data, device, out)


@main.command()
@EXPORT_DIR_OPTION
@CPU_FORMS_OPTION
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1))
@click.option(
    "--runs",
    default=3,
    show_default=True,
    type=click.IntRange(1),
    help="Profiled runs (after 1 warm-up one).",
)
@click.option("--as-is", is_flag=True, help="Also the int8 file as written (no CPU form).")
@click.option("--data", type=EXISTING_DIR, help="HW2-layout root for images [default: synthetic].")
@click.option(
    "--out",
    type=OUT_DIR,
    help="Where profile.json / profile.md go [default: the export directory].",
)
def profile(export_dir, forms, batch, runs, as_is, data, out):
    """ONNX Runtime's CPU time by op type per form, and how much of the Conv/Gemm/MatMul work
    ran in integer kernels (its profiler and optimized graph)."""
    from digit_reader.benchmarks import profile as bench

    _exit(bench.main, export_dir, forms, batch, runs, data, as_is, out)


@main.command()
@EXPORT_DIR_OPTION
@CPU_FORMS_OPTION
@click.option("--batch", "batches", default="1,8", show_default=True, callback=positive_ints)
@click.option("--data", type=EXISTING_DIR, help="HW2-layout root for images [default: synthetic].")
@click.option(
    "--out",
    type=OUT_DIR,
    help="Where memory.json / memory.md go [default: the export directory].",
)
def memory(export_dir, forms, batches, data, out):
    """Peak resident memory per ONNX form and batch on the CPU, each in a fresh process."""
    from digit_reader.benchmarks import memory as bench

    _exit(bench.main, export_dir, forms, batches, data, out)


@main.command()
@run_option("digit-train run directory (or checkpoint).")
@click.option("--batch", "batches", default="1,8", show_default=True, callback=positive_ints)
@click.option("--iters", default=10, show_default=True, type=click.IntRange(1))
@device_option("Where the model runs")
@click.option("--out", type=OUT_DIR, help="Where eager.json / eager.md go [default: the run].")
def eager(run_dir, batches, iters, device, out):
    """The PyTorch model's own latency (fp32 with TF32 off; on CUDA also fp16 autocast): the
    baseline an exported engine must beat, without an export."""
    from digit_reader.benchmarks import eager_latency as bench

    _exit(bench.main, run_dir, batches, iters, device, out)


@main.command("read-speed")
@click.argument("images", nargs=-1, required=True)
@click.option("--model", required=True, type=click.Path(exists=True))
@click.option("--batch-size", default=8, show_default=True)
@click.option("--repeats", default=3, show_default=True)
@click.option("--limit", type=int, help="use only the first N images")
def read_speed(images, model, batch_size, repeats, limit):
    """The reader's images/s end to end (CPU) and the share of time outside the model."""
    from digit_reader.benchmarks import read_speed as bench

    click.echo(json.dumps(bench.run(images, model, batch_size, repeats, limit), indent=2))


@main.command("synth-speed")
@click.option("--n", type=click.IntRange(1), default=500, show_default=True, help="images a run")
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
def synth_speed(n, repeats, seed):
    """Synthetic images per second on one core (median of the repeats)."""
    from digit_reader.benchmarks import synth_speed as bench

    click.echo(json.dumps(bench.run(n, repeats, seed)))


@main.command("train-speed")
@click.option("--data", type=EXISTING_DIR)
@click.option("--steps", default=40, show_default=True, help="Training steps per measurement.")
@click.option("--repeats", default=2, show_default=True, help="Alternating repeats of each loop.")
@click.option("--batch", default=8, show_default=True)
@click.option("--to-accuracy", type=float, help="Train nano fully; time to this valid accuracy.")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory for --to-accuracy.")
@click.option(
    "--from-run",
    type=EXISTING_DIR,
    help="With --to-accuracy: read a finished nano run instead of training one.",
)
@click.option("--threads", type=int, help="torch threads (default: torch's choice).")
def train_speed(data, steps, repeats, batch, to_accuracy, out, from_run, threads):
    """Nano training speed against a plain torchvision-style loop, or the time to an accuracy
    bar (--to-accuracy)."""
    if to_accuracy is not None and data is None and from_run is None:
        raise click.UsageError("--to-accuracy needs --data ROOT or --from-run RUN")
    if to_accuracy is None and data is None:
        raise click.UsageError("--data ROOT is required")
    from digit_reader.benchmarks import train_speed as bench

    result = bench.run(data, steps, repeats, batch, to_accuracy, out, from_run, threads)
    click.echo(json.dumps(result, indent=2))


@main.command()
@click.argument("result", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def report(result):
    """The Markdown of a saved result JSON (parity, latency, profile, memory, triton-load,
    ray-speed; e.g. after a format change)."""
    from digit_reader.benchmarks import (
        eager_latency,
        latency,
        memory,
        parity,
        profile,
        ray_speed,
        triton_load,
    )

    data = json.loads(result.read_text(encoding="utf-8"))
    render = {
        "eager": eager_latency.markdown,
        "parity": parity.markdown,
        "latency": latency.markdown,
        "profile": profile.markdown,
        "memory": memory.markdown,
        "triton_load": triton_load.markdown,
        "ray_speed": ray_speed.markdown,
    }
    if not isinstance(data, dict) or data.get("benchmark") not in render:
        raise UserError(f"{result}: not a digit-bench result ({', '.join(render)})", code=2)
    click.echo(render[data["benchmark"]](data))


def _add_standalone_commands() -> None:
    """Benchmarks that are click commands of their own module (runnable with python -m too)."""
    from digit_reader.benchmarks import ray_speed, triton_load

    main.add_command(triton_load.main, "triton-load")
    main.add_command(ray_speed.main, "ray-speed")


_add_standalone_commands()


if __name__ == "__main__":
    main()
