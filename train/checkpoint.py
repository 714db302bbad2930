"""Checkpoints: plain tensors and builtins only, written atomically, read with weights_only=True.

The configs are stored as plain dicts (never pickled objects), so a checkpoint loads without
executing code and without this package's classes. `last.pt` holds everything a resume needs;
`best.pt` holds the model, its config and the metrics that made it best.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from digit_reader.runtime import atomic
from digit_reader.runtime.errors import UserError

FORMAT = "digit-reader/checkpoint@1"
BEST, LAST = "best.pt", "last.pt"


def save_checkpoint(path: str | Path, state: dict) -> None:
    """torch.save to memory, then an atomic rename: an interrupted save leaves the old file."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    atomic.write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint", code=2)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - every unreadable file gets the same one-line report
        raise UserError(
            f"{path}: not a digit-reader checkpoint ({type(e).__name__}: {str(e)[:200]})", code=2
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise UserError(f"{path}: not a digit-reader checkpoint (format {got!r})", code=2)
    return state


def checkpoint_path(path_or_run_dir: str | Path, name: str = BEST) -> Path:
    """A .pt file as given, or `name` inside a run directory."""
    path = Path(path_or_run_dir)
    if path.is_dir():
        path = path / name
        if not path.is_file():
            raise UserError(f"{path.parent}: no {name} in this run directory", code=2)
    return path


def load_model(path_or_run_dir: str | Path, device="cpu"):
    """(model in eval mode on `device`, ModelConfig) from a checkpoint or a run directory."""
    from digit_reader.train.config import ModelConfig
    from digit_reader.train.model import build_model

    path = checkpoint_path(path_or_run_dir)
    state = load_checkpoint(path)
    cfg = ModelConfig.from_dict(state["model_config"])
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg
