"""Short nano runs on a tiny synthetic set: outputs, Ctrl-C + exact resume, divergence."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from digit_reader.train import checkpoint, engine, evaluate, presets
from digit_reader.train.cli import main
from digit_reader.train.data.hw2 import load_split
from digit_reader.train.data.synth import synthesize

pytestmark = pytest.mark.slow
ARGS = ["--preset", "nano", "--device", "cpu", "--epochs", "2", "--quiet", "--seed", "3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, {"train": 40, "valid": 12, "test": 5}, seed=1)
    return root


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> tuple[Path, str]:
    run = tmp_path_factory.mktemp("runs") / "straight"
    result = CliRunner().invoke(main, ["--data", str(data), "--out", str(run), *ARGS])
    assert result.exit_code == 0, result.output
    return run, result.stdout


def _records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def test_short_run_lowers_loss_and_writes_every_output(straight, data):
    run, stdout = straight
    for name in ("best.pt", "last.pt", "config.json", "preset.txt", "metrics.jsonl"):
        assert (run / name).is_file(), name
    for fig in ("fig1_lr.png", "fig2_accuracy.png", "fig3_map.png", "fig4_loss.png"):
        assert (run / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", fig
    steps, epochs = _records(run, "step"), _records(run, "epoch")
    assert [r["step"] for r in steps] == list(range(1, 11))  # 40 images / batch 8 x 2 epochs
    assert [r["epoch"] for r in epochs] == [1, 2]
    # an epoch's record holds the valid metrics of the weights it ended with: best.pt's here
    best = checkpoint.load_checkpoint(run / "best.pt")
    model, cfg = checkpoint.load_model(run / "best.pt")
    valid = load_split(data, "valid")
    m = evaluate.metrics(
        evaluate.predict(model, valid, cfg.canvas, presets.preset("nano")[1], torch.device("cpu")),
        valid,
    )
    assert m["map50"] > 0  # not vacuous: the comparison below sees a non-zero score
    (record,) = [r for r in epochs if r["epoch"] == best["epoch"]]
    assert {k: record[k] for k in m} == pytest.approx(m, abs=1e-9) == best["metrics"]
    first, last = steps[:3], steps[-3:]
    assert sum(r["loss"] for r in last) < 0.8 * sum(r["loss"] for r in first)

    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == "nano" and config["model"]["canvas"] == [64, 128]
    assert "nano" in (run / "preset.txt").read_text()

    csv_lines = (run / "pred.csv").read_text().splitlines()
    assert csv_lines[0] == "image_id,pred_label"
    assert [line.split(",")[0] for line in csv_lines[1:]] == ["1", "2", "3", "4", "5"]
    assert isinstance(json.loads((run / "pred.json").read_text()), list)
    assert (run / "submission.zip").is_file()
    assert str(run) in stdout and "best" in stdout

    model, cfg = checkpoint.load_model(run)
    assert not model.training and cfg.backbone == "nano"
    out = model([torch.rand(3, *cfg.canvas)])
    assert set(out[0]) == {"boxes", "scores", "labels"}


def test_ctrl_c_saves_last_and_resume_continues_exactly(straight, data, tmp_path):
    """Ctrl-C as a terminal sends it, to the whole process group: the trainer and its two
    DataLoader workers, which must leave the clean stop to the trainer."""
    ref, _ = straight
    run = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "digit_reader.train", "--data", str(data), "--out", str(run)]
    cmd += [*ARGS, "--workers", "2"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        log = run / "metrics.jsonl"
        if log.is_file() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)  # the process group, workers included
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert err.decode().count("stopping after this step") == 1  # the trainer, not its workers
    assert "continue with: digit-train --resume" in err.decode()
    stopped = checkpoint.load_checkpoint(run / "last.pt")
    assert 2 <= stopped["step"] < 10

    result = CliRunner().invoke(main, ["--resume", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    done, want = (
        checkpoint.load_checkpoint(run / "last.pt"),
        checkpoint.load_checkpoint(ref / "last.pt"),
    )
    assert done["step"] == want["step"] == 10
    assert done["scheduler"]["_schedulers"][1] == want["scheduler"]["_schedulers"][1]
    got_steps, ref_steps = _records(run, "step"), _records(ref, "step")
    assert [r["step"] for r in got_steps] == list(range(1, 11))
    assert [r["lr"] for r in got_steps] == [r["lr"] for r in ref_steps]
    for key, value in want["model"].items():
        torch.testing.assert_close(done["model"][key], value, rtol=0, atol=0, msg=key)
    assert [r["accuracy"] for r in _records(run, "epoch")] == [
        r["accuracy"] for r in _records(ref, "epoch")
    ]


def test_resume_with_another_world_size_is_refused(straight, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(straight[0], run)
    state = checkpoint.load_checkpoint(run / "last.pt")
    assert state["world_size"] == 1
    state["world_size"] = 2  # as if trained under torchrun --nproc_per_node=2
    state.pop("format")
    checkpoint.save_checkpoint(run / "last.pt", state)
    result = CliRunner().invoke(main, ["--resume", str(run), "--epochs", "3", "--quiet"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "trained with 2 process(es), this resume has 1" in result.stderr
    assert "--nproc_per_node=2" in result.stderr


def test_resume_refuses_changed_settings(straight):
    run, _ = straight
    result = CliRunner().invoke(main, ["--resume", str(run), "--lr", "0.1"])
    assert result.exit_code == 1 and "--lr: cannot change on --resume" in result.output


def test_nan_loss_stops_with_a_clear_message(data, tmp_path):
    mcfg, tcfg = presets.preset("nano")
    tcfg.lr, tcfg.warmup_steps, tcfg.grad_clip, tcfg.epochs = 1e30, 0, None, 1
    spec = engine.RunSpec(tmp_path / "run", data, mcfg, tcfg, preset="nano", device="cpu")
    with pytest.raises(engine.TrainingDiverged) as e:
        engine.train(spec, progress=False)
    msg = str(e.value)
    assert "loss is nan" in msg or "loss is inf" in msg
    assert "no checkpoint was written yet" in msg and "\n" not in msg
    assert not (tmp_path / "run" / "last.pt").exists()
    assert not (tmp_path / "run" / "best.pt").exists()


def test_train_speed_reads_when_a_finished_run_reached_a_bar(straight):
    from digit_reader.benchmarks.cli import main as bench

    run, _ = straight
    result = CliRunner().invoke(
        bench, ["train-speed", "--from-run", str(run), "--to-accuracy", "0"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["to_accuracy"]
    assert report["reached"]["epoch"] == 1 and [r["epoch"] for r in report["per_epoch"]] == [1, 2]
    assert report["best"] == json.loads((run / "summary.json").read_text())["best"]


def test_existing_run_is_not_overwritten(straight, data):
    run, _ = straight
    result = CliRunner().invoke(main, ["--data", str(data), "--out", str(run), *ARGS])
    assert result.exit_code == 1 and "--resume" in result.output
