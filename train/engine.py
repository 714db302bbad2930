"""The training loop: per-iteration LR schedule, AMP on CUDA, per-epoch validation, checkpoints.

One function, `train`, runs single-process or as one torchrun rank. Rank 0 alone logs and
writes. The position (epoch, batch within it), the model, optimiser, scheduler, scaler and
torch RNG go into last.pt, and the batch order and augmentation depend only on (seed, epoch,
index), so `--resume` continues the run as if it had never stopped.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from digit_reader.runtime import atomic
from digit_reader.runtime.errors import UserError
from digit_reader.train import checkpoint, distributed, evaluate, plots, presets
from digit_reader.train.config import ModelConfig, TrainConfig
from digit_reader.train.data.hw2 import LoadReport, load_split
from digit_reader.train.dataset import DigitDataset, collate, epoch_batches, to_model_input
from digit_reader.train.model import build_model

METRICS = "metrics.jsonl"
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


def read_records(run_dir: Path, up_to_step: int | None = None) -> list[dict]:
    path = run_dir / METRICS
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            if up_to_step is None or r["step"] <= up_to_step:
                out.append(r)
    return out


class MetricsLog:
    """metrics.jsonl, appended line by line by rank 0 (a log, not a document)."""

    def __init__(self, run_dir: Path, records: list[dict]):
        self.path = run_dir / METRICS
        self.records = records
        # a resumed run drops lines written after its checkpoint: they will be redone
        atomic.write_text(self.path, "".join(json.dumps(r) + "\n" for r in records))
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: dict) -> None:
        self.records.append(record)
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class StopFlag:
    """First Ctrl-C: stop cleanly after the current step (last.pt saved there). Second: abort."""

    def __init__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step (Ctrl-C again to abort)", file=sys.stderr)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is visible; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    return device


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


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _is_better(m: dict, best: dict | None, select: str) -> bool:
    if best is None:
        return True
    other = "map" if select == "accuracy" else "accuracy"
    return (m[select], m[other]) > (best[select], best[other])


def train(spec: RunSpec, resume: bool = False, progress: bool = True) -> dict:
    """Train (or continue) the run in spec.run_dir; returns the summary (rank 0's view).

    A resumed run keeps its scheduler: more --epochs on a single-decay schedule (t0=None)
    continue at the decayed LR.
    """
    tcfg, mcfg = spec.train, spec.model
    tcfg.validate()
    mcfg.validate()
    device_name = _resolve_device(spec.device)
    info = distributed.init(device_name)
    device = distributed.device_for(device_name, info)
    try:
        return _train(spec, resume, progress and info.main, info, device)
    finally:
        distributed.shutdown(info)


def _train(spec: RunSpec, resume: bool, progress: bool, info, device) -> dict:
    tcfg, mcfg, run_dir = spec.train, spec.model, Path(spec.run_dir)
    t_start = time.perf_counter()
    torch.manual_seed(tcfg.seed)
    train_s, valid_s = _load_splits(Path(spec.data_root), spec.limit_train, info.main)
    batches_per_epoch = len(epoch_batches(len(train_s), tcfg.batch_size, 0, 0, 0, info.world))
    total_steps = batches_per_epoch * tcfg.epochs

    model = build_model(mcfg, spec.backbone_weights).to(device)
    optimizer = make_optimizer(model, tcfg)
    scheduler = make_scheduler(optimizer, tcfg, total_steps)
    use_amp = device.type == "cuda" and tcfg.amp
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    step, epoch, skip, best = 0, 0, 0, None
    if resume:
        state = checkpoint.load_checkpoint(run_dir / checkpoint.LAST)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step, epoch, skip = state["step"], state["epoch"], state["batch_in_epoch"]
        best = state.get("best")
        _set_rng_state(state["rng"], device)
    if info.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_json(run_dir / CONFIG, spec.config_dict(), indent=2)
        atomic.write_text(run_dir / PRESET_TXT, presets.describe(spec.preset))
        log = MetricsLog(run_dir, read_records(run_dir, step) if resume else [])
    net = model
    if info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def state_dict(position_epoch: int, batch_in_epoch: int) -> dict:
        return {
            "model": model.state_dict(),
            "model_config": mcfg.to_dict(),
            "train_config": tcfg.to_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "step": step,
            "epoch": position_epoch,
            "batch_in_epoch": batch_in_epoch,
            "total_steps": total_steps,
            "rng": _rng_state(device),
            "best": best,
        }

    workers = tcfg.workers if tcfg.workers is not None else (4 if device.type == "cuda" else 0)
    dataset = DigitDataset(train_s, mcfg.canvas, tcfg, train=True)
    images_per_step = tcfg.batch_size * info.world
    if info.main:
        print(
            f"training {spec.preset} ({mcfg.backbone}, canvas {mcfg.canvas[0]}x{mcfg.canvas[1]}) "
            f"on {device} x{info.world}: {len(train_s)} train / {len(valid_s)} valid images, "
            f"{batches_per_epoch} steps/epoch, {tcfg.epochs} epochs"
            + (f", resuming at step {step}" if resume else ""),
            file=sys.stderr,
        )
    train_time, train_images, done_in_epoch = 0.0, 0, skip
    stop = StopFlag()
    try:
        while epoch < tcfg.epochs:
            net.train()
            batches = epoch_batches(
                len(train_s), tcfg.batch_size, epoch, tcfg.seed, info.rank, info.world
            )[skip:]
            # its own generator: a DataLoader draws a base seed at every iter(), and drawing
            # it from the global RNG would make a resumed run's RPN/RoI sampling diverge
            loader = DataLoader(
                dataset,
                batch_sampler=batches,
                collate_fn=collate,
                num_workers=workers,
                generator=torch.Generator().manual_seed(tcfg.seed + epoch),
            )
            bar = tqdm(
                loader,
                desc=f"epoch {epoch + 1}/{tcfg.epochs}",
                total=len(batches),
                disable=None if progress else True,  # None: only on a terminal
                file=sys.stderr,
                dynamic_ncols=True,
            )
            done_in_epoch, t_epoch, loss_sum, loss_n = skip, time.perf_counter(), 0.0, 0
            smooth, rate = None, None
            t0 = time.perf_counter()  # step time includes loading its batch
            for images, targets, _ in bar:
                inputs = to_model_input(images, device)
                targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    losses = net(inputs, targets)
                loss = sum(losses.values())
                parts = {k: float(v.detach()) for k, v in losses.items()}
                # the Ctrl-C flag rides along, so every rank stops at the same step
                parts = distributed.mean_across(
                    parts | {"stop": float(stop.requested)}, info, device
                )
                stop_now = parts.pop("stop") > 0
                total = sum(parts.values())
                if not math.isfinite(total):
                    where = f"step {step + 1} (epoch {epoch + 1})"
                    last = run_dir / checkpoint.LAST
                    kept = (
                        f"{last} is the last good checkpoint"
                        if last.exists()
                        else "no checkpoint was written yet"
                    )
                    bad = ", ".join(f"{k}={v}" for k, v in parts.items())
                    raise TrainingDiverged(
                        f"loss is {total} at {where} ({bad}); stopped, {kept}; "
                        "try a lower --lr or --grad-clip"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if tcfg.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                step += 1
                done_in_epoch += 1
                t1 = time.perf_counter()
                dt, t0 = t1 - t0, t1
                train_time += dt
                train_images += images_per_step
                loss_sum, loss_n = loss_sum + total, loss_n + 1
                smooth = total if smooth is None else 0.9 * smooth + 0.1 * total
                now = images_per_step / dt
                rate = now if rate is None else 0.9 * rate + 0.1 * now
                if info.main:
                    log.write(
                        {"type": "step", "step": step, "epoch": epoch + 1, "loss": total, "lr": lr}
                        | {"losses": parts}
                    )
                    bar.set_postfix_str(f"loss {smooth:.3f} lr {lr:.2e} {rate:.1f} img/s")
                if stop_now:
                    bar.close()
                    if info.main:
                        last = run_dir / checkpoint.LAST
                        checkpoint.save_checkpoint(last, state_dict(epoch, done_in_epoch))
                    raise Interrupted(
                        f"interrupted at step {step}; saved {run_dir / checkpoint.LAST}, "
                        f"continue with: digit-train --resume {run_dir}"
                    )
            bar.close()
            epoch_time = time.perf_counter() - t_epoch
            t_eval = time.perf_counter()
            dets = evaluate.predict(model, valid_s, mcfg.canvas, tcfg, device, info, progress)
            m = evaluate.metrics(dets, valid_s) if info.main else None
            m = distributed.broadcast(m, info)
            epoch, skip, done_in_epoch = epoch + 1, 0, 0
            record = {
                "type": "epoch",
                "epoch": epoch,
                "step": step,
                **m,
                "train_loss": loss_sum / max(loss_n, 1),
                "train_time_s": round(epoch_time, 3),
                "eval_time_s": round(time.perf_counter() - t_eval, 3),
                "images_per_s": round(train_images / train_time, 3) if train_time else None,
            }
            improved = _is_better(m, best, tcfg.select)
            if improved:
                best = {"epoch": epoch, "step": step, **m}
            if info.main:
                log.write(record)
                full = state_dict(epoch, 0)
                if improved:
                    keep = ("model", "model_config", "train_config", "step", "epoch", "best")
                    checkpoint.save_checkpoint(
                        run_dir / checkpoint.BEST, {k: full[k] for k in keep} | {"metrics": m}
                    )
                checkpoint.save_checkpoint(run_dir / checkpoint.LAST, full)
                plots.write_figures(run_dir, log.records)
                mark = " (best)" if improved else ""
                print(
                    f"epoch {epoch}/{tcfg.epochs}: valid accuracy {m['accuracy']:.4f} "
                    f"mAP {m['map']:.4f} mAP50 {m['map50']:.4f} loss {record['train_loss']:.4f}"
                    f" {record['images_per_s']} img/s{mark}",
                    file=sys.stderr,
                )
            distributed.barrier(info)
    except KeyboardInterrupt:
        raise Interrupted(
            f"aborted at step {step}; {run_dir / checkpoint.LAST} (if any) is from the last "
            "epoch end or the last clean stop"
        ) from None
    finally:
        stop.restore()
        if info.main:
            log.close()

    summary = {
        "run_dir": str(run_dir),
        "preset": spec.preset,
        "backbone": mcfg.backbone,
        "device": str(device),
        "world_size": info.world,
        "steps": step,
        "epochs": tcfg.epochs,
        "best": best,
        "train_images_per_s": round(train_images / train_time, 2) if train_time else None,
        "wall_time_s": round(time.perf_counter() - t_start, 1),
    }
    test_dir = Path(spec.data_root) / "test"
    if test_dir.is_dir():
        summary["submission"] = _submission(spec, device, info)
    if info.main:
        atomic.write_json(run_dir / "summary.json", summary, indent=2)
    return summary


def _submission(spec: RunSpec, device, info) -> dict | None:
    """pred.json / pred.csv / submission.zip for root/test from best.pt."""
    test_s = load_split(spec.data_root, "test")
    distributed.barrier(info)
    model, mcfg = checkpoint.load_model(spec.run_dir, device)
    dets = evaluate.predict(model, test_s, mcfg.canvas, spec.train, device, info)
    if not info.main:
        return None
    paths = evaluate.write_submission(spec.run_dir, dets, test_s)
    return {"images": len(test_s), **paths}
