"""The training loop: per-iteration LR schedule, AMP on CUDA, per-epoch validation, checkpoints.

`train` runs single-process or as one torchrun rank: setup, then per epoch `train_one_epoch`,
`evaluate` and `end_of_epoch` (the shape of torchvision's references/detection engine). Rank 0
alone logs and writes. The position (epoch, batch within it), the model, optimiser, scheduler,
scaler and torch RNG go into last.pt (`checkpoint_state`), and the batch order and augmentation
depend only on (seed, epoch, index), so `--resume` continues the run as if it had never stopped.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from digit_reader.runtime import atomic
from digit_reader.runtime.contract import resolve_device
from digit_reader.runtime.errors import UserError
from digit_reader.train import checkpoint, distributed, plots, presets
from digit_reader.train.config import ModelConfig, TrainConfig
from digit_reader.train.data.hw2 import LoadReport, Sample, load_split
from digit_reader.train.dataset import (
    DigitDataset,
    collate,
    epoch_batches,
    loader_options,
    to_model_input,
)
from digit_reader.train.evaluate import metrics, predict
from digit_reader.train.metrics_log import MetricsLog, read_records
from digit_reader.train.model import build_model
from digit_reader.train.run_state import Position, Training, checkpoint_state, restore
from digit_reader.train.stop import StopFlag

CONFIG = "config.json"
PRESET_TXT = "preset.txt"


class TrainingDiverged(UserError):
    """A NaN/inf loss: the run stops, last.pt stays the last good checkpoint."""


class Interrupted(UserError):
    """Ctrl-C: last.pt was saved at the current step."""

    def __init__(self, message: str):
        super().__init__(message, code=130)


@dataclass
class RunSpec:
    """What `digit-train` resolved from its options; config.json is this, as plain data."""

    run_dir: Path
    data_root: Path
    model: ModelConfig
    train: TrainConfig
    preset: str = "all"
    device: str = "cpu"
    backbone_weights: str | None = None  # file the backbone started from, None = scratch
    limit_train: int | None = None  # use only the first N training images (smoke runs)

    def config_dict(self) -> dict:
        return {
            "preset": self.preset,
            "data_root": str(self.data_root),
            "backbone_weights": self.backbone_weights,
            "limit_train": self.limit_train,
            "model": self.model.to_dict(),
            "train": self.train.to_dict(),
        }


def make_optimizer(model: torch.nn.Module, tcfg: TrainConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)


def make_scheduler(optimizer, tcfg: TrainConfig, total_steps: int):
    """CosineAnnealingWarmRestarts stepped per iteration (T_0 in steps), after optional warm-up.

    t0=None means a single cosine decay over the steps after the warm-up (no restart).
    """
    from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, LinearLR, SequentialLR

    warmup = min(tcfg.warmup_steps, max(total_steps - 1, 0))
    if tcfg.t0 is None:
        t0, t_mult = max(total_steps - warmup, 1), 1
    else:
        t0, t_mult = tcfg.t0, tcfg.t_mult
    cosine = CosineAnnealingWarmRestarts(optimizer, T_0=t0, T_mult=t_mult, eta_min=tcfg.eta_min)
    if warmup <= 0:
        return cosine
    ramp = LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])


@dataclass
class Speed:
    """Training time and images of this process (evaluation excluded), over all its epochs."""

    seconds: float = 0.0
    images: int = 0

    def images_per_s(self, digits: int) -> float | None:
        return round(self.images / self.seconds, digits) if self.seconds else None


@dataclass
class Run:
    """One process's part in a training run: what it trains, where, and what it reports to."""

    spec: RunSpec
    info: distributed.DistInfo
    device: torch.device
    progress: bool
    log: MetricsLog | None = None  # rank 0 only
    stop: StopFlag | None = None
    speed: Speed = field(default_factory=Speed)

    @property
    def last(self) -> Path:
        return Path(self.spec.run_dir) / checkpoint.LAST


@contextmanager
def session(spec: RunSpec) -> Iterator[tuple[distributed.DistInfo, torch.device]]:
    """Check the configs, join torchrun's process group (if any) and pick this rank's device;
    leave the group on exit."""
    spec.train.validate()
    spec.model.validate()
    device_name = resolve_device(spec.device, torch.cuda.is_available())
    info = distributed.init(device_name)
    try:
        yield info, distributed.device_for(device_name, info)
    finally:
        distributed.shutdown(info)


def train(spec: RunSpec, resume: bool = False, progress: bool = True) -> dict:
    """Train (or continue) the run in spec.run_dir; returns the summary (rank 0's view).

    A resumed run keeps its scheduler: more --epochs on a single-decay schedule (t0=None)
    continue at the decayed LR.
    """
    with session(spec) as (info, device):
        return fit(Run(spec, info, device, progress and info.main), resume)


def fit(run: Run, resume: bool) -> dict:
    """Setup, then the epoch loop, in a joined session (see `session`)."""
    spec, tcfg, info, device = run.spec, run.spec.train, run.info, run.device
    t_start = time.perf_counter()
    torch.manual_seed(tcfg.seed)
    train_s, valid_s = _load_splits(Path(spec.data_root), spec.limit_train, info.main)
    t = _setup(spec, len(train_s), info, device)
    pos = restore(t, run.last, info, device) if resume else Position()
    if info.main:
        run.log = _open_run_dir(spec, resume, pos.step)
    if info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        t.net = torch.nn.parallel.DistributedDataParallel(t.model, device_ids=ids)
    dataset = DigitDataset(train_s, spec.model.canvas, tcfg, train=True, sharpen=spec.model.sharpen)
    if info.main:
        _announce(spec, info, device, len(train_s), len(valid_s), t.steps_per_epoch, resume, pos)
    run.stop = StopFlag()
    try:
        while pos.epoch < tcfg.epochs:
            loss, seconds = train_one_epoch(run, t, pos, _epoch_loader(dataset, run, pos))
            t_eval = time.perf_counter()
            m = evaluate(run, t.model, valid_s)
            eval_s = time.perf_counter() - t_eval
            end_of_epoch(run, t, pos, m, loss, seconds, eval_s)
            distributed.barrier(info)
    except KeyboardInterrupt:
        raise Interrupted(
            f"aborted at step {pos.step}; {run.last} (if any) is from the last "
            "epoch end or the last clean stop"
        ) from None
    finally:
        run.stop.restore()
        if info.main:
            run.log.close()
    return {
        "run_dir": str(spec.run_dir),
        "preset": spec.preset,
        "backbone": spec.model.backbone,
        "device": str(device),
        "world_size": info.world,
        "steps": pos.step,
        "epochs": tcfg.epochs,
        "best": pos.best,
        "train_images_per_s": run.speed.images_per_s(2),
        "wall_time_s": round(time.perf_counter() - t_start, 1),
        "peak_gpu_mb": _peak_gpu_mb(device),
    }


def _peak_gpu_mb(device: torch.device) -> float | None:
    """The most GPU memory torch held for this process's tensors (None on the CPU)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def _load_splits(data_root: Path, limit: int | None, main: bool):
    report = LoadReport()
    train_s = load_split(data_root, "train", report)
    valid_s = load_split(data_root, "valid", report)
    if limit is not None:
        train_s = train_s[:limit]
    if not train_s:
        raise UserError(f"{data_root}: the train split has no images")
    if not (data_root / "valid.json").is_file() or not valid_s:
        raise UserError(f"{data_root}: training needs a labelled valid split (valid.json)")
    if main:
        for w in report.warnings:
            print(f"warning: {w}", file=sys.stderr)
        if report.clipped_boxes or report.dropped_boxes:
            print(
                f"warning: {report.clipped_boxes} boxes clipped to their image, "
                f"{report.dropped_boxes} dropped (no area inside it)",
                file=sys.stderr,
            )
    return train_s, valid_s


def _setup(spec: RunSpec, n_train: int, info, device: torch.device) -> Training:
    """Model, optimiser, schedule over every step of every epoch, and AMP scaler."""
    tcfg = spec.train
    batches_per_epoch = len(epoch_batches(n_train, tcfg.batch_size, 0, 0, 0, info.world))
    total_steps = batches_per_epoch * tcfg.epochs
    model = build_model(spec.model, spec.backbone_weights).to(device)
    optimizer = make_optimizer(model, tcfg)
    scheduler = make_scheduler(optimizer, tcfg, total_steps)
    use_amp = device.type == "cuda" and tcfg.amp
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    return Training(
        model, model, optimizer, scheduler, scaler, batches_per_epoch, total_steps, use_amp
    )


def _open_run_dir(spec: RunSpec, resume: bool, step: int) -> MetricsLog:
    """config.json, preset.txt, and metrics.jsonl cut back to `step` on a resume."""
    run_dir = Path(spec.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_json(run_dir / CONFIG, spec.config_dict(), indent=2)
    atomic.write_text(run_dir / PRESET_TXT, presets.describe(spec.preset))
    return MetricsLog(run_dir, read_records(run_dir, step) if resume else [])


def _announce(spec, info, device, n_train, n_valid, steps_per_epoch, resume, pos) -> None:
    mcfg, tcfg = spec.model, spec.train
    print(
        f"training {spec.preset} ({mcfg.backbone}, canvas {mcfg.canvas[0]}x{mcfg.canvas[1]}) "
        f"on {device} x{info.world}: {n_train} train / {n_valid} valid images, "
        f"{steps_per_epoch} steps/epoch, {tcfg.epochs} epochs"
        + (f", resuming at step {pos.step}" if resume else ""),
        file=sys.stderr,
    )


def _epoch_loader(dataset: DigitDataset, run: Run, pos: Position) -> DataLoader:
    """This rank's batches of epoch `pos.epoch`, without the `pos.skip` already done."""
    tcfg, info = run.spec.train, run.info
    batches = epoch_batches(
        len(dataset), tcfg.batch_size, pos.epoch, tcfg.seed, info.rank, info.world
    )
    # its own generator: a DataLoader draws a base seed at every iter(), and drawing
    # it from the global RNG would make a resumed run's RPN/RoI sampling diverge
    return DataLoader(
        dataset,
        batch_sampler=batches[pos.skip :],
        collate_fn=collate,
        generator=torch.Generator().manual_seed(tcfg.seed + pos.epoch),
        **loader_options(tcfg.workers, run.device),
    )


def train_one_epoch(run: Run, t: Training, pos: Position, loader: DataLoader):
    """The rest of epoch `pos.epoch`; returns (mean loss, seconds). On Ctrl-C saves last.pt at
    the step reached and raises Interrupted."""
    tcfg, info = run.spec.train, run.info
    t.net.train()
    bar = tqdm(
        loader,
        desc=f"epoch {pos.epoch + 1}/{tcfg.epochs}",
        total=len(loader),
        disable=None if run.progress else True,  # None: only on a terminal
        file=sys.stderr,
        dynamic_ncols=True,
    )
    done, t_epoch, loss_sum, loss_n = pos.skip, time.perf_counter(), 0.0, 0
    smooth, rate = None, None
    images_per_step = tcfg.batch_size * info.world
    t0 = time.perf_counter()  # step time includes loading its batch
    for images, targets, _ in bar:
        losses, total, lr, stop_now = train_step(run, t, pos, images, targets)
        done += 1
        t1 = time.perf_counter()
        dt, t0 = t1 - t0, t1
        run.speed.seconds += dt
        run.speed.images += images_per_step
        loss_sum, loss_n = loss_sum + total, loss_n + 1
        smooth = total if smooth is None else 0.9 * smooth + 0.1 * total
        now = images_per_step / dt
        rate = now if rate is None else 0.9 * rate + 0.1 * now
        if info.main:
            run.log.write(
                {"type": "step", "step": pos.step, "epoch": pos.epoch + 1, "loss": total, "lr": lr}
                | {"losses": losses}
            )
            bar.set_postfix_str(f"loss {smooth:.3f} lr {lr:.2e} {rate:.1f} img/s")
        if stop_now:
            bar.close()
            if info.main:
                checkpoint.save_checkpoint(run.last, _state(run, t, pos, done))
            raise Interrupted(
                f"interrupted at step {pos.step}; saved {run.last}, "
                f"continue with: digit-train --resume {run.spec.run_dir}"
            )
    bar.close()
    return loss_sum / max(loss_n, 1), time.perf_counter() - t_epoch


def train_step(run: Run, t: Training, pos: Position, images, targets):
    """Forward, NaN check, backward, optimiser and LR step; returns (losses averaged over the
    ranks, their sum, the LR the step used, whether a Ctrl-C asks every rank to stop)."""
    tcfg, device = run.spec.train, run.device
    inputs = to_model_input(images, device)
    targets = [{k: v.to(device) for k, v in target.items()} for target in targets]
    with torch.autocast(device.type, dtype=torch.float16, enabled=t.use_amp):
        losses = t.net(inputs, targets)
    loss = sum(losses.values())
    parts = {k: float(v.detach()) for k, v in losses.items()}
    # the Ctrl-C flag rides along, so every rank stops at the same step
    parts = distributed.mean_across(parts | {"stop": float(run.stop.requested)}, run.info, device)
    stop_now = parts.pop("stop") > 0
    total = sum(parts.values())
    if not math.isfinite(total):
        raise _diverged(total, parts, pos, run.last)
    lr = optimizer_step(t, loss, tcfg.grad_clip)
    pos.step += 1
    return parts, total, lr, stop_now


def optimizer_step(t: Training, loss: torch.Tensor, grad_clip: float | None) -> float:
    """Backward, (clip,) AMP-scaled optimiser step, then the LR schedule; returns the LR used.

    The schedule is indexed by iteration, so it advances even when the AMP scaler skips an
    optimiser step (inf/NaN gradients while it calibrates its scale); torch then warns that
    the scheduler stepped before the optimiser, which here is the intent, so that warning is
    silenced for this call only.
    """
    t.optimizer.zero_grad(set_to_none=True)
    t.scaler.scale(loss).backward()
    if grad_clip:
        t.scaler.unscale_(t.optimizer)
        torch.nn.utils.clip_grad_norm_(t.model.parameters(), grad_clip)
    t.scaler.step(t.optimizer)
    t.scaler.update()
    lr = t.optimizer.param_groups[0]["lr"]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
        t.scheduler.step()
    return lr


def _diverged(total: float, parts: dict, pos: Position, last: Path) -> TrainingDiverged:
    where = f"step {pos.step + 1} (epoch {pos.epoch + 1})"
    kept = (
        f"{last} is the last good checkpoint" if last.exists() else "no checkpoint was written yet"
    )
    bad = ", ".join(f"{k}={v}" for k, v in parts.items())
    return TrainingDiverged(
        f"loss is {total} at {where} ({bad}); stopped, {kept}; try a lower --lr or --grad-clip"
    )


def evaluate(run: Run, model: torch.nn.Module, valid_s: list[Sample]) -> dict:
    """Valid metrics (accuracy, map, map50) on every rank: each predicts a shard, rank 0
    scores them all."""
    tcfg, info = run.spec.train, run.info
    mcfg = run.spec.model
    dets = predict(model, valid_s, mcfg.canvas, tcfg, run.device, info, run.progress, mcfg.sharpen)
    return distributed.broadcast(metrics(dets, valid_s) if info.main else None, info)


def end_of_epoch(run: Run, t: Training, pos: Position, m: dict, loss, seconds, eval_s) -> None:
    """Count the epoch done; rank 0 logs it, keeps best.pt and last.pt, redraws the figures."""
    tcfg, run_dir = run.spec.train, Path(run.spec.run_dir)
    pos.epoch, pos.skip = pos.epoch + 1, 0
    record = {
        "type": "epoch",
        "epoch": pos.epoch,
        "step": pos.step,
        **m,
        "train_loss": loss,
        "train_time_s": round(seconds, 3),
        "eval_time_s": round(eval_s, 3),
        "images_per_s": run.speed.images_per_s(3),
    }
    improved = _is_better(m, pos.best, tcfg.select)
    if improved:
        pos.best = {"epoch": pos.epoch, "step": pos.step, **m}
    if not run.info.main:
        return
    run.log.write(record)
    full = _state(run, t, pos, 0)
    if improved:
        keep = ("model", "model_config", "train_config", "step", "epoch", "best")
        best = {k: full[k] for k in keep} | {"metrics": m}
        checkpoint.save_checkpoint(run_dir / checkpoint.BEST, best)
    checkpoint.save_checkpoint(run.last, full)
    plots.write_figures(run_dir, run.log.records)
    print(
        f"epoch {pos.epoch}/{tcfg.epochs}: valid accuracy {m['accuracy']:.4f} "
        f"mAP {m['map']:.4f} mAP50 {m['map50']:.4f} loss {loss:.4f}"
        f" {record['images_per_s']} img/s{' (best)' if improved else ''}",
        file=sys.stderr,
    )


def _is_better(m: dict, best: dict | None, select: str) -> bool:
    if best is None:
        return True
    other = "map" if select == "accuracy" else "accuracy"
    return (m[select], m[other]) > (best[select], best[other])


def _state(run: Run, t: Training, pos: Position, batch_in_epoch: int) -> dict:
    return checkpoint_state(run.spec, t, pos, batch_in_epoch, run.info.world)
