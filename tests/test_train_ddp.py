"""torchrun with 2 gloo processes on the CPU trains, evaluates and checkpoints like one process."""

import json
import os
import subprocess
import sys

import pytest
import torch

from digit_reader.train import checkpoint, evaluate, presets
from digit_reader.train.data.hw2 import load_split
from digit_reader.train.data.synth import synthesize

pytestmark = pytest.mark.slow


def test_torchrun_two_gloo_processes(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    synthesize(data, {"train": 40, "valid": 12, "test": 3}, seed=2)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "digit_reader.train",
        *("--data", str(data), "--out", str(run), "--preset", "nano", "--device", "cpu"),
        *("--epochs", "2", "--quiet"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on cpu x2" in proc.stdout  # the summary, printed once (rank 0)
    assert proc.stdout.count("run        ") == 1

    # 40 images over 2 ranks = 20 each = 3 batches of <= 8 per epoch
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["type"] == "step"] == list(range(1, 7))
    epochs = [r for r in lines if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert checkpoint.load_checkpoint(run / "last.pt")["step"] == 6
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["submission"]["images"] == 3
    assert len((run / "pred.csv").read_text().splitlines()) == 4

    # the metrics gathered from both ranks equal a single-process evaluation of best.pt
    state = checkpoint.load_checkpoint(run / "best.pt")
    model, mcfg = checkpoint.load_model(run / "best.pt")
    _, tcfg = presets.preset("nano")
    valid = load_split(data, "valid")
    m = evaluate.metrics(
        evaluate.predict(model, valid, mcfg.canvas, tcfg, torch.device("cpu")), valid
    )
    assert m["accuracy"] == pytest.approx(state["metrics"]["accuracy"])
    assert m["map"] == pytest.approx(state["metrics"]["map"], abs=1e-6)


def test_ctrl_c_under_torchrun_stops_every_rank_at_one_step_and_saves(tmp_path):
    """A terminal's Ctrl-C reaches torchrun's agent, which forwards SIGINT to each rank's
    process group (the rank and its DataLoader worker); the ranks agree on a step, rank 0
    writes last.pt there, and --resume continues from it."""
    import signal
    import time

    data, run = tmp_path / "data", tmp_path / "run"
    synthesize(data, {"train": 64, "valid": 6}, seed=2)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "digit_reader.train", "--data", str(data), "--out", str(run)]
    cmd += ["--preset", "nano", "--device", "cpu", "--epochs", "3", "--quiet", "--workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True
    )
    deadline = time.monotonic() + 300
    log = run / "metrics.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # the terminal's foreground group: the agent
    _, err = proc.communicate(timeout=300)
    err = err.decode()
    assert "continue with: digit-train --resume" in err, err[-3000:]
    assert err.count("stopping after this step") == 2  # the two ranks, not their workers
    stopped = checkpoint.load_checkpoint(run / "last.pt")
    steps = [json.loads(x)["step"] for x in log.read_text().splitlines()]
    assert stopped["step"] == steps[-1] and 2 <= stopped["step"] < 12  # 4 steps per epoch
    assert stopped["world_size"] == 2
