"""What a training run is made of between two steps, and how last.pt saves and restores it.

`Training` holds what a step changes (model, optimiser, LR schedule, AMP scaler); `Position`
where the run stands (step, epochs done, batches of the current epoch done, the best epoch so
far). `checkpoint_state` puts both, the configs and the RNG into last.pt; `restore` loads them
back, so `--resume` continues as if the run had never stopped.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from digit_reader.runtime.errors import UserError
from digit_reader.train import checkpoint


@dataclass
class Training:
    """What a step changes: the model (and its DDP wrapper `net`), optimiser, LR schedule and
    AMP scaler."""

    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    steps_per_epoch: int  # of this rank
    total_steps: int
    use_amp: bool


@dataclass
class Position:
    """Where the run stands; last.pt records it and --resume starts from it."""

    step: int = 0
    epoch: int = 0  # epochs finished
    skip: int = 0  # batches of `epoch` done before a resume
    best: dict | None = None  # {epoch, step, metrics} of best.pt


def restore(t: Training, last: Path, info, device: torch.device) -> Position:
    """Load last.pt into the training objects and the RNG; returns where it stopped."""
    state = checkpoint.load_checkpoint(last)
    check_world_size(state.get("world_size"), info.world, last)
    t.model.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.scheduler.load_state_dict(state["scheduler"])
    note = restore_scaler(t.scaler, state["scaler"])
    if note and info.main:
        print(f"note: {note}", file=sys.stderr)
    set_rng_state(state["rng"], device)
    return Position(state["step"], state["epoch"], state["batch_in_epoch"], state.get("best"))


def restore_scaler(scaler: torch.amp.GradScaler, saved: dict) -> str | None:
    """Load the AMP scaler's state; a checkpoint from a run without AMP (a CPU run, or
    --no-amp) has none, and then the scaler starts fresh, as on a new run (returns a note)."""
    if saved or not scaler.is_enabled():
        scaler.load_state_dict(saved)  # a disabled scaler ignores what it is given
        return None
    return (
        "the checkpoint was saved without AMP (a CPU or --no-amp run): AMP starts now with a "
        "fresh gradient scaler"
    )


def check_world_size(saved: int | None, now: int, last: Path) -> None:
    """Refuse a resume with another number of processes: the per-rank batch order and the
    steps per epoch (so the LR schedule) depend on it."""
    if saved is not None and saved != now:
        raise UserError(
            f"{last}: this run was trained with {saved} process(es), this resume has {now}; "
            f"resume with the same number (torchrun --nproc_per_node={saved}"
            + (", or without torchrun" if saved == 1 else "")
            + ")",
            code=2,
        )


def checkpoint_state(spec, t: Training, pos: Position, batch_in_epoch: int, world: int) -> dict:
    """last.pt: everything --resume needs to continue at (pos.epoch, batch_in_epoch)."""
    device = next(t.model.parameters()).device
    return {
        "model": t.model.state_dict(),
        "model_config": spec.model.to_dict(),
        "train_config": spec.train.to_dict(),
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(),
        "scaler": t.scaler.state_dict(),
        "step": pos.step,
        "epoch": pos.epoch,
        "batch_in_epoch": batch_in_epoch,
        "total_steps": t.total_steps,
        "world_size": world,
        "rng": rng_state(device),
        "best": pos.best,
    }


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
