"""`digit-train`: the seed report's experiments from the command line, on CUDA or the CPU.

Works under torchrun as is: `torchrun --nproc_per_node=N -m digit_reader.train ...` (or the
`digit-train` script) trains with DistributedDataParallel, rank 0 logging and writing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click

from digit_reader.runtime.command import Command, device_option
from digit_reader.runtime.errors import UserError
from digit_reader.train.config import BACKBONES
from digit_reader.train.presets import PRESET_NAMES

RESUMABLE = {"resume", "epochs", "device", "workers", "data", "threads", "quiet"}


@click.command(cls=Command)
@click.option("--data", "data", type=click.Path(path_type=Path), help="HW2-layout data root.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Run directory to create [default: runs/PRESET-YYYYmmdd-HHMMSS].",
)
@click.option(
    "--preset",
    type=click.Choice(PRESET_NAMES),
    default="all",
    show_default=True,
    help="The report's experiment (all = its final model); nano = small CPU model.",
)
@click.option(
    "--backbone",
    type=click.Choice(BACKBONES),
    help="Swap the backbone (the report's Table 4).",
)
@click.option("--sharpen", is_flag=True, help="PIL-sharpen every input image (Table 5).")
@click.option("--epochs", type=click.IntRange(min=1), help="Override the preset's epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per step per process.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Peak learning rate.")
@click.option(
    "--select",
    type=click.Choice(["accuracy", "map"]),
    help="Keep best.pt by valid whole-number accuracy (default) or mAP.",
)
@device_option("Where training runs")
@click.option(
    "--backbone-weights",
    type=click.Path(path_type=Path),
    help="ImageNet state-dict file for the backbone (instead of torchvision's cache).",
)
@click.option("--no-pretrained", is_flag=True, help="Train the backbone from scratch.")
@click.option(
    "--resume",
    type=click.Path(path_type=Path),
    help="Continue the run in this directory exactly where last.pt left it.",
)
@click.option("--workers", type=click.IntRange(min=0), help="DataLoader worker processes.")
@click.option("--seed", type=int, help="Seed for weights, batch order and augmentation.")
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads per process.")
@click.option(
    "--limit-train", type=click.IntRange(min=1), help="Use only the first N training images."
)
@click.option("--no-amp", is_flag=True, help="Disable mixed precision on CUDA.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def main(ctx, **opts):
    """Train the Faster R-CNN digit reader; writes best.pt, last.pt, metrics and figures."""
    summary = run(ctx, opts)
    if summary is not None:
        click.echo(format_summary(summary))


def _given(ctx, name: str) -> bool:
    return ctx.get_parameter_source(name) not in (
        click.core.ParameterSource.DEFAULT,
        click.core.ParameterSource.DEFAULT_MAP,
        None,
    )


def _threads(opts) -> None:
    import torch

    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    elif int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        per = max(1, (os.cpu_count() or 1) // int(os.environ["LOCAL_WORLD_SIZE"]))
        torch.set_num_threads(per)


def run(ctx, opts) -> dict | None:
    _threads(opts)
    resume = opts["resume"] is not None
    spec = _resume_spec(ctx, opts) if resume else _new_spec(opts)
    return train_and_submit(spec, resume, progress=not opts["quiet"])


def train_and_submit(spec, resume: bool, progress: bool) -> dict | None:
    """Train, then the HW2 submission from best.pt when ROOT/test exists, then summary.json;
    returns the summary on rank 0, None on the other torchrun ranks."""
    from digit_reader.runtime import atomic
    from digit_reader.train import engine, submission

    with engine.session(spec) as (info, device):
        summary = engine.fit(engine.Run(spec, info, device, progress and info.main), resume)
        if (Path(spec.data_root) / "test").is_dir():
            summary["submission"] = submission.submit(
                Path(spec.run_dir), Path(spec.data_root), spec.train, device, info
            )
        if info.main:
            atomic.write_json(Path(spec.run_dir) / "summary.json", summary, indent=2)
    return summary if info.main else None


def _new_spec(opts):
    from digit_reader.train import engine, model, presets

    if opts["data"] is None:
        raise UserError("--data ROOT is required (an HW2-layout data set), or --resume RUN")
    mcfg, tcfg = presets.preset(opts["preset"], opts["backbone"])
    for key in ("epochs", "batch_size", "lr", "select", "workers", "seed"):
        if opts[key] is not None:
            setattr(tcfg, key, opts[key])
    mcfg.sharpen = opts["sharpen"] or mcfg.sharpen
    tcfg.amp = tcfg.amp and not opts["no_amp"]
    weights = model.resolve_backbone_weights(
        mcfg.backbone, opts["backbone_weights"], pretrained=not opts["no_pretrained"]
    )
    if weights is None and mcfg.backbone != "nano":
        # from scratch: train every layer with batch statistics, as torchvision does
        mcfg.norm, mcfg.trainable_layers = "bn", 5
    out = opts["out"] or Path("runs") / f"{opts['preset']}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (out / "last.pt").exists() or (out / "best.pt").exists():
        raise UserError(f"{out} already holds a run; continue it with --resume {out}")
    return engine.RunSpec(
        run_dir=out,
        data_root=opts["data"],
        model=mcfg,
        train=tcfg,
        preset=opts["preset"],
        device=opts["device"],
        backbone_weights=str(weights) if weights else None,
        limit_train=opts["limit_train"],
    )


def _resume_spec(ctx, opts):
    from digit_reader.train import config, engine

    run_dir = opts["resume"]
    bad = sorted(k for k in opts if k not in RESUMABLE and _given(ctx, k))
    if bad:
        names = ", ".join("--" + k.replace("_", "-") for k in bad)
        allowed = ", ".join("--" + k.replace("_", "-") for k in sorted(RESUMABLE - {"resume"}))
        raise UserError(f"{names}: cannot change on --resume (only {allowed})")
    cfg_path = run_dir / engine.CONFIG
    if not (run_dir / "last.pt").is_file() or not cfg_path.is_file():
        raise UserError(f"{run_dir}: not a run directory with last.pt and {engine.CONFIG}")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    tcfg = config.TrainConfig.from_dict(cfg["train"])
    if opts["epochs"] is not None:
        tcfg.epochs = opts["epochs"]
    if opts["workers"] is not None:
        tcfg.workers = opts["workers"]
    return engine.RunSpec(
        run_dir=run_dir,
        data_root=opts["data"] or Path(cfg["data_root"]),
        model=config.ModelConfig.from_dict(cfg["model"]),
        train=tcfg,
        preset=cfg["preset"],
        device=opts["device"],
        backbone_weights=None,  # the checkpoint holds the weights
        limit_train=cfg.get("limit_train"),
    )


def format_summary(s: dict) -> str:
    best = s.get("best") or {}
    lines = [
        f"run        {s['run_dir']}",
        f"model      {s['preset']} preset, {s['backbone']} backbone, on {s['device']}"
        + (f" x{s['world_size']}" if s["world_size"] > 1 else ""),
        f"trained    {s['steps']} steps, {s['epochs']} epochs, "
        f"{s['train_images_per_s']} images/s, wall {s['wall_time_s']} s",
        f"best       epoch {best.get('epoch')}: valid accuracy {best.get('accuracy', 0):.4f}, "
        f"mAP {best.get('map', 0):.4f}, mAP50 {best.get('map50', 0):.4f}",
        f"files      best.pt last.pt config.json preset.txt metrics.jsonl fig*.png "
        f"in {s['run_dir']}",
    ]
    sub = s.get("submission")
    if sub:
        files = f"{sub['csv']} {sub['json']} {sub['zip']}"
        lines.append(f"submission {sub['images']} test images: {files}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
