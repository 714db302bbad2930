"""The seed's architecture with stand-in weights, for measuring what does not need trained ones.

    python -m digit_reader.train.standin --out runs/r101-standin [--data ROOT] [--canvas 800x1344]

ImageNet weights and SVHN cannot be downloaded on the development machines, so the seed's
final model (ResNet-101 FPN, the report's anchors, canvas 800x1344, torchvision's inference
settings) is built with torchvision's random initialisation; its BatchNorm statistics are
estimated on synthetic SVHN-like canvases, so activations keep a trained network's scale through
101 layers, and then frozen as in the seed (FrozenBatchNorm2d). The result is written as a
digit-train run directory (best.pt + config.json) that digit-export and digit-bench take as is.

It reads no digits: accuracy from it means nothing. Export time, file sizes, latency and the
exported graph's agreement with the eager model are real measurements of the architecture.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click
import numpy as np
import torch

from digit_reader.runtime import atomic
from digit_reader.runtime.command import Command
from digit_reader.train import checkpoint, samples
from digit_reader.train.config import ModelConfig, TrainConfig
from digit_reader.train.model import build_model

NOTE = "stand-in weights: random init, BatchNorm statistics of synthetic canvases; reads no digits"


def calibrated_state(cfg: ModelConfig, canvases: np.ndarray, seed: int) -> dict:
    """A model state dict whose BatchNorm running statistics come from `canvases`."""
    torch.manual_seed(seed)
    model = build_model(dataclasses.replace(cfg, norm="bn", trainable_layers=5))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over every calibration batch
    model.eval()
    model.backbone.train()
    mean = torch.tensor(cfg.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.image_std).view(1, 3, 1, 1)
    with torch.no_grad():
        for start in range(0, len(canvases), 2):
            x = torch.from_numpy(canvases[start : start + 2]).float() / 255.0
            model.backbone((x - mean) / std)
    return model.state_dict()


def make(out: Path, cfg: ModelConfig, data: Path | None, images: int, seed: int) -> Path:
    paths, origin = samples.sample_paths(data, images, cache_dir=out)  # else out/synthetic
    print(f"standin: BatchNorm statistics from {len(paths)} images of {origin}", file=sys.stderr)
    state = calibrated_state(cfg, samples.canvases(paths, cfg.canvas), seed)
    cfg = dataclasses.replace(cfg, extra={"stand_in": NOTE})
    frozen = build_model(cfg)
    frozen.load_state_dict(state)  # FrozenBatchNorm2d drops num_batches_tracked itself
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.save_checkpoint(
        out / checkpoint.BEST,
        {
            "model": frozen.state_dict(),
            "model_config": cfg.to_dict(),
            "train_config": TrainConfig().to_dict(),
            "step": 0,
            "epoch": 0,
            "best": None,
            "metrics": {},
        },
    )
    config = {"preset": "all", "data_root": str(data or out / "synthetic"), "note": NOTE}
    atomic.write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    return out / checkpoint.BEST


def _canvas(ctx, param, value: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter("HxW, e.g. 800x1344") from None
    return h, w


@click.command(cls=Command)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--backbone", default="resnet101", show_default=True)
@click.option("--canvas", default="800x1344", show_default=True, callback=_canvas)
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--images", default=16, show_default=True, help="Calibration images.")
@click.option("--seed", default=0, show_default=True)
def main(out, backbone, canvas, data, images, seed):
    """Write a stand-in checkpoint of the seed's architecture (see the module docstring)."""
    cfg = ModelConfig(backbone=backbone, canvas=canvas)
    path = make(out, cfg, data, images, seed)
    click.echo(str(path))


if __name__ == "__main__":
    main()
