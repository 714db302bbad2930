"""Training speed of the nano preset on the CPU, against a plain torchvision loop.

    digit-bench train-speed --data ROOT [--steps 40] [--repeats 2]
    digit-bench train-speed --data ROOT --to-accuracy 0.90   # full nano run
    digit-bench train-speed --from-run demo/run --to-accuracy 0.90  # make demo's run

`speed`: images/s of `digit-train`'s loop (train.engine, data loading included, evaluation
excluded) and of a plain torchvision-reference-style loop (same model config, same data
pipeline, same batch size, AdamW and the preset's gradient clipping; no logging, no NaN
check, no scheduler), run alternately so both see the same machine load. Ours must not be
slower.
`--to-accuracy`: trains the nano preset for its full schedule and reports the wall time
(training + per-epoch evaluation) at which valid whole-number accuracy first reached the bar.
digit-bench prints the result as a JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from digit_reader.benchmarks.machine import machine


def plain_loop_images_per_s(data: Path, steps: int, batch: int) -> float:
    """torchvision references/detection style: build, load, forward, backward, step."""
    from torch.utils.data import DataLoader

    from digit_reader.train import presets
    from digit_reader.train.data.hw2 import load_split
    from digit_reader.train.dataset import DigitDataset, collate, to_model_input
    from digit_reader.train.model import build_model

    mcfg, tcfg = presets.preset("nano")
    tcfg.batch_size = batch
    torch.manual_seed(0)
    samples = load_split(data, "train")[: steps * batch]
    model = build_model(mcfg).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    dataset = DigitDataset(samples, mcfg.canvas, tcfg, train=True, sharpen=mcfg.sharpen)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, collate_fn=collate)
    n, t0 = 0, time.perf_counter()
    for images, targets, _ in loader:
        loss = sum(model(to_model_input(images, "cpu"), targets).values())
        optimizer.zero_grad()
        loss.backward()
        if tcfg.grad_clip:  # part of the preset's config, so part of the same work
            torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
        optimizer.step()
        n += len(targets)
    return n / (time.perf_counter() - t0)


def engine_images_per_s(data: Path, steps: int, batch: int, work: Path) -> float:
    from digit_reader.train import engine, presets

    mcfg, tcfg = presets.preset("nano")
    tcfg.epochs, tcfg.batch_size = 1, batch
    run = Path(tempfile.mkdtemp(dir=work))
    spec = engine.RunSpec(
        run, data, mcfg, tcfg, preset="nano", device="cpu", limit_train=steps * batch
    )
    return engine.train(spec, progress=False)["train_images_per_s"]


def speed(data: Path, steps: int, repeats: int, batch: int) -> dict:
    ours, plain = [], []
    with tempfile.TemporaryDirectory() as work:
        for r in range(repeats):
            # ABBA order: whichever loop runs second in a pair does not always win the warm-up
            order = ("ours", "plain") if r % 2 == 0 else ("plain", "ours")
            for which in order:
                print(f"repeat {r + 1}/{repeats}: {which} loop", file=sys.stderr)
                if which == "ours":
                    ours.append(engine_images_per_s(data, steps, batch, Path(work)))
                else:
                    plain.append(plain_loop_images_per_s(data, steps, batch))
    med_ours, med_plain = statistics.median(ours), statistics.median(plain)
    return {
        "steps": steps,
        "batch": batch,
        "digit_train_images_per_s": [round(v, 2) for v in ours],
        "plain_loop_images_per_s": [round(v, 2) for v in plain],
        "ratio_of_medians": round(med_ours / med_plain, 3),
    }


def time_to_accuracy(data: Path | None, bar: float, out: Path | None, done: Path | None) -> dict:
    """Train nano fully (or read a finished run's metrics.jsonl) and find when it hit `bar`."""
    from digit_reader.train import engine, metrics_log, presets

    if done is not None:
        run = done
        summary = json.loads((run / "summary.json").read_text())
        wall = summary["wall_time_s"]
    else:
        mcfg, tcfg = presets.preset("nano")
        run = out or Path(tempfile.mkdtemp(prefix="nano-"))
        spec = engine.RunSpec(run, data, mcfg, tcfg, preset="nano", device="cpu")
        t0 = time.perf_counter()
        summary = engine.train(spec, progress=True)
        wall = time.perf_counter() - t0
    epochs = [r for r in metrics_log.read_records(run) if r["type"] == "epoch"]
    elapsed, reached = 0.0, None
    for r in epochs:
        elapsed += r["train_time_s"] + r["eval_time_s"]
        if reached is None and r["accuracy"] >= bar:
            reached = {"epoch": r["epoch"], "seconds": round(elapsed, 1)}
    return {
        "run_dir": str(run),
        "bar": bar,
        "reached": reached,
        "per_epoch": [
            {k: r[k] for k in ("epoch", "accuracy", "map", "train_time_s", "eval_time_s")}
            for r in epochs
        ],
        "best": summary["best"],
        "train_images_per_s": summary["train_images_per_s"],
        "wall_time_s": round(wall, 1),
    }


def run(data, steps, repeats, batch, to_accuracy, out, from_run, threads) -> dict:
    """`speed`, or `time_to_accuracy` when a bar is given; with the machine it ran on."""
    if threads:
        torch.set_num_threads(threads)
    result = {"machine": machine() | {"torch_threads": torch.get_num_threads()}}
    if to_accuracy is not None:
        result["to_accuracy"] = time_to_accuracy(data, to_accuracy, out, from_run)
    else:
        result["speed"] = speed(data, steps, repeats, batch)
    return result
