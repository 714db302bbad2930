"""`digit-export RUN [--fp16]`: ONNX graph(s), TensorRT engine(s) and model.json, parity-gated.

Exit codes: 0 exported (an engine skipped for want of TensorRT/GPU is said on stderr), 1 the
graph failed a TensorRT rule or the parity gate (nothing written) or --engine could not be
met, 2 usage. `--triton REPO` also writes a Triton model repository (export/triton_repo.py);
`digit-export EXPORT_DIR --triton REPO` writes one from an existing export, re-exporting nothing.
"""

from __future__ import annotations

from pathlib import Path

import click

from digit_reader.export.defaults import FP16_MIN_AGREEMENT, OPSET, PARITY_IMAGES, WORKSPACE_GIB
from digit_reader.export.tensorrt_engine import BatchProfile
from digit_reader.runtime.command import Command
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.modelcard import CARD_NAME


@click.command(cls=Command)
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out", "-o", type=click.Path(path_type=Path), help="Output directory [default: RUN/export]."
)
@click.option("--fp16", is_flag=True, help="Also write model.fp16.onnx (and its engine).")
@click.option("--engine", is_flag=True, help="Fail unless the TensorRT engine(s) get built.")
@click.option("--min-batch", default=BatchProfile.min, show_default=True, type=click.IntRange(1))
@click.option("--opt-batch", default=BatchProfile.opt, show_default=True, type=click.IntRange(1))
@click.option("--max-batch", default=BatchProfile.max, show_default=True, type=click.IntRange(1))
@click.option(
    "--workspace",
    default=WORKSPACE_GIB,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="TensorRT workspace, GiB.",
)
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TensorRT timing cache to read and update (faster rebuilds).",
)
@click.option(
    "--parity-images",
    default=PARITY_IMAGES,
    show_default=True,
    type=click.IntRange(1),
    help="Images the exported graphs must read as the eager model does.",
)
@click.option(
    "--fp16-min-agreement",
    default=FP16_MIN_AGREEMENT,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of images the fp16 forms must read as the eager model does.",
)
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="HW2-layout root for the parity images [default: the run's data, else synthetic].",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="Where the parity gate runs PyTorch and ONNX Runtime.",
)
@click.option("--opset", default=OPSET, show_default=True, type=click.IntRange(16, 21))
@click.option(
    "--triton",
    "triton_repo",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write a Triton Inference Server model repository here (REPO/digit_reader/...).",
)
def main(
    source, out, fp16, engine, min_batch, opt_batch, max_batch, workspace, triton_repo, **rest
):
    """Export a digit-train run (or checkpoint) to ONNX and TensorRT.

    Writes model.onnx (uint8 [N, 3, H, W] canvas in; num_dets, boxes, scores, labels out),
    model.fp16.onnx with --fp16, model.engine / model.fp16.engine where TensorRT and an
    NVIDIA GPU are present, and model.json, which digit-read needs beside them. With
    --triton REPO also a Triton model repository of them; SOURCE may then be an export
    directory, which is not re-exported.
    """
    profile = BatchProfile(min_batch, opt_batch, max_batch)
    if source.is_dir() and (source / CARD_NAME).is_file():
        if not triton_repo or fp16 or engine or out:
            raise UserError(
                f"{source} is an export directory (it has {CARD_NAME}): give only --triton REPO "
                "(and the batch options) to write a Triton repository from it, or export from "
                "the training run",
                code=2,
            )
        click.echo(format_triton(source, triton_repo, _write_triton(source, triton_repo, profile)))
        return
    from digit_reader.export.exporter import ExportOptions, run

    opts = ExportOptions(
        source=source,
        out=out,
        fp16=fp16,
        engine=engine,
        profile=profile,
        workspace_gib=workspace,
        **rest,
    )
    summary = run(opts)
    click.echo(format_summary(summary))
    if triton_repo:
        models = _write_triton(Path(summary["out"]), triton_repo, profile)
        click.echo(format_triton(Path(summary["out"]), triton_repo, models))


def _write_triton(export_dir: Path, repo: Path, profile: BatchProfile) -> list[str]:
    from digit_reader.export.triton_repo import write_repository

    return write_repository(export_dir, repo, profile)


def format_triton(export_dir: Path, repo: Path, models: list[str]) -> str:
    return f"triton     {repo} ({', '.join(models)}; from {export_dir}, see {repo}/README.md)"


def format_summary(s: dict) -> str:
    took = f"ONNX export {s['onnx_export_s']} s" + (
        f", fp16 conversion {s['fp16_convert_s']} s" if "fp16_convert_s" in s else ""
    )
    lines = [f"export     {s['out']} ({s['seconds']} s in all; {took})"]
    for name, size in s["files"].items():
        lines.append(f"  {name:<20} {size / 1e6:9.2f} MB")
    lines.append("  model.json")
    for name, text in s["parity"].items():
        lines.append(f"parity     {name}: {text}")
    lines.append(f"engine     {s['engine']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
