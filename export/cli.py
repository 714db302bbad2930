"""`digit-export RUN [--fp16] [--int8]`: ONNX graph(s), TensorRT engine(s) and model.json,
parity-gated.

Exit codes: 0 exported (an engine skipped for want of TensorRT/GPU is said on stderr), 1 the
graph failed a TensorRT rule or the parity gate (nothing written) or --engine could not be
met, 2 usage. `--triton REPO` also writes a Triton model repository (export/triton_repo.py);
`digit-export EXPORT_DIR --triton REPO` writes one from an existing export, re-exporting nothing.
"""

from __future__ import annotations

from pathlib import Path

import click

from digit_reader.export.defaults import (
    CALIB_IMAGES,
    CALIB_METHOD,
    CALIB_PERCENTILE,
    INT8_PARITY_IMAGES,
    OPSET,
    PARITY_IMAGES,
    WORKSPACE_GIB,
)
from digit_reader.export.tensorrt_engine import BatchProfile
from digit_reader.runtime.command import Command, device_option
from digit_reader.runtime.contract import (
    BF16_MIN_AGREEMENT,
    FP16_MIN_AGREEMENT,
    INT8_MAX_ACCURACY_DROP,
    INT8_MIN_AGREEMENT,
)
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.modelcard import CARD_NAME


@click.command(cls=Command)
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out", "-o", type=click.Path(path_type=Path), help="Output directory [default: RUN/export]."
)
@click.option("--fp16", is_flag=True, help="Also write model.fp16.onnx (and its engine).")
@click.option(
    "--int8",
    is_flag=True,
    help="Also write model.int8.onnx (explicitly quantized: Q/DQ), its calibration cache "
    "model.int8.calib.json, and its engine.",
)
@click.option(
    "--openvino",
    is_flag=True,
    help="Also write OpenVINO IR (model.xml/.bin, model.int8.xml/.bin with --int8), gated "
    "(fp32 IR also in bf16 where the CPU has it). Needs the [openvino] extra.",
)
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
    "--bf16-min-agreement",
    default=BF16_MIN_AGREEMENT,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="--openvino on a CPU with bf16: share of images the bf16 form must read as the "
    "eager model does.",
)
@click.option(
    "--calib-images",
    default=CALIB_IMAGES,
    show_default=True,
    type=click.IntRange(1),
    help="--int8: images (the run's valid split, else synthetic) the ranges are measured on.",
)
@click.option(
    "--calib-method",
    type=click.Choice(["max", "percentile", "entropy"]),
    default=CALIB_METHOD,
    show_default=True,
    help="--int8: range of each activation: its absolute maximum, or a percentile of it "
    "(closer reads, slower calibration). "
    "entropy is refused, with the reason.",
)
@click.option(
    "--calib-percentile",
    default=CALIB_PERCENTILE,
    show_default=True,
    type=click.FloatRange(0, 100, min_open=True),
    help="--int8 --calib-method percentile: the percentile of |activation| kept.",
)
@click.option(
    "--int8-parity-images",
    default=INT8_PARITY_IMAGES,
    show_default=True,
    type=click.IntRange(1),
    help="--int8: images (with labels) the int8 forms are gated on.",
)
@click.option(
    "--int8-min-agreement",
    default=INT8_MIN_AGREEMENT,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="--int8: share of those images the int8 forms must read as the eager model does.",
)
@click.option(
    "--int8-max-accuracy-drop",
    default=INT8_MAX_ACCURACY_DROP,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="--int8: how far (0.01 = 1 point) int8 accuracy may fall below the eager model's.",
)
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="HW2-layout root for the parity images [default: the run's data, else synthetic].",
)
@device_option("Where the parity gate runs PyTorch and ONNX Runtime")
@click.option("--opset", default=OPSET, show_default=True, type=click.IntRange(16, 21))
@click.option(
    "--graph-cache",
    metavar="DIR|off",
    help="Where model.onnx of earlier exports is kept for reuse (same checkpoint, opset, "
    "versions and code) [default: $DIGIT_READER_CACHE, else $XDG_CACHE_HOME/digit-reader, "
    "else ~/.cache/digit-reader].",
)
@click.option(
    "--triton",
    "triton_repo",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write a Triton Inference Server model repository here (REPO/digit_reader/...).",
)
@click.pass_context
def main(
    ctx,
    source,
    out,
    fp16,
    int8,
    engine,
    min_batch,
    opt_batch,
    max_batch,
    workspace,
    triton_repo,
    **rest,
):
    """Export a digit-train run (or checkpoint) to ONNX and TensorRT.

    Writes model.onnx (uint8 [N, 3, H, W] canvas in; num_dets, boxes, scores, labels out),
    model.fp16.onnx with --fp16, model.int8.onnx with --int8, an engine of each where
    TensorRT and an NVIDIA GPU are present, and model.json, which digit-read needs beside
    them. With --triton REPO also a Triton model repository of them; SOURCE may then be an
    export directory, which is not re-exported.
    """
    profile = BatchProfile(min_batch, opt_batch, max_batch)
    if source.is_dir() and (source / CARD_NAME).is_file():
        if not triton_repo or fp16 or int8 or engine or out or rest["openvino"]:
            raise UserError(
                f"{source} is an export directory (it has {CARD_NAME}): give only --triton REPO "
                "(and the batch options) to write a Triton repository from it, or export from "
                "the training run",
                code=2,
            )
        click.echo(format_triton(source, triton_repo, _write_triton(source, triton_repo, profile)))
        return
    from digit_reader.export.exporter import ExportOptions, run

    _check_needs(ctx)
    opts = ExportOptions(
        source=source,
        out=out,
        fp16=fp16,
        int8=int8,
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


# options that mean something only with a flag: given without it, a usage error
NEEDS = {
    "int8": (
        "calib_images",
        "calib_method",
        "calib_percentile",
        "int8_parity_images",
        "int8_min_agreement",
        "int8_max_accuracy_drop",
    ),
    "openvino": ("bf16_min_agreement",),
}


def _check_needs(ctx) -> None:
    for flag, options in NEEDS.items():
        if ctx.params[flag]:
            continue
        given = [p for p in options if ctx.get_parameter_source(p).name != "DEFAULT"]
        if given:
            raise click.UsageError(f"--{given[0].replace('_', '-')} needs --{flag}")


def format_summary(s: dict) -> str:
    how = "from the graph cache" if s.get("onnx_from_cache") else "export"
    took = f"ONNX {how} {s['onnx_export_s']} s" + (
        f", fp16 conversion {s['fp16_convert_s']} s" if "fp16_convert_s" in s else ""
    )
    if "int8_quantize_s" in s:
        c = s["int8_calibration"]
        how = "from the calibration cache" if c["from_cache"] else f"{c['images']} images"
        took += f", int8 quantization {s['int8_quantize_s']} s ({c['method']}, {how})"
    lines = [f"export     {s['out']} ({s['seconds']} s in all; {took})"]
    for name, size in s["files"].items():
        shown = f"{name} + .bin" if name.endswith(".xml") else name
        lines.append(f"  {shown:<20} {size / 1e6:9.2f} MB")
    lines.append("  model.json")
    for name, text in s["parity"].items():
        lines.append(f"parity     {name}: {text}")
    lines.append(f"engine     {s['engine']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
