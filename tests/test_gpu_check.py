"""`make gpu-check`'s step running and report, with the GPU steps faked (no GPU here); the real
steps are the project's CLIs, run on an NVIDIA machine only."""

import subprocess
from pathlib import Path

from digit_reader.benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[1]


def test_without_a_gpu_make_stops_at_once_with_one_line_and_exit_2():
    proc = subprocess.run(["make", "-s", "gpu-check"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "no NVIDIA GPU here" in proc.stderr
    assert not (ROOT / ".venv-gpu").exists()  # stopped before installing anything


def test_the_runner_also_refuses_without_a_gpu(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(gpu_check, "has_gpu", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "r.md")]) == 2
    assert capsys.readouterr().err == gpu_check.NO_GPU + "\n"
    assert not (tmp_path / "r.md").exists()


def test_steps_cover_every_gpu_path_and_chain_their_inputs(tmp_path):
    steps = gpu_check.plan(tmp_path, ROOT, Path("/venv/bin"))
    by_name = {s.name: s for s in steps}
    argv = [" ".join(s.argv) for s in steps]
    assert "-m gpu or tensorrt" in argv[0]
    assert any("digit-train" in a and "--device cuda" in a and "--epochs 2" in a for a in argv)
    assert any("--resume" in a and "--epochs 3" in a for a in argv)
    assert any("digit-export" in a and "--engine" in a and "--fp16" in a for a in argv)
    assert any("latency" in a and "--device cuda" in a for a in argv)
    assert any("digit-export" in a and "--engine" in a and "--int8" in a for a in argv)
    for step in steps:  # every dependency is an earlier step
        assert all(n in by_name and steps.index(by_name[n]) < steps.index(step) for n in step.needs)
    assert gpu_check.plan(tmp_path, None, Path("/b"))[0].argv == []  # no tests/ in a wheel


def test_a_failed_step_skips_what_depends_on_it_and_the_report_says_so(tmp_path):
    steps = gpu_check.plan(tmp_path, ROOT, Path("/venv/bin"))
    fail_at = "resume for a third epoch"

    def runner(argv):
        failing = any(s.name == fail_at and s.argv == argv for s in steps)
        return (1, "Traceback ...\nRuntimeError: CUDA out of memory") if failing else (0, "ok")

    outcomes = gpu_check.run_steps(steps, runner, log=lambda m: None)
    status = {o.name: o.status for o in outcomes}
    assert status["train nano, 2 epochs, CUDA + AMP"] == "pass"
    assert status[fail_at] == "fail"
    assert status["export fp32 + fp16 with engines"] == "skipped"
    assert status["latency of every form"] == "skipped"
    text = gpu_check.report(outcomes, {"gpu": "NVIDIA A10, 550.54, 23028 MiB, 8.6", "torch": "x"})
    assert "3 of 10 steps passed on NVIDIA A10" in text
    assert f"| {fail_at} | fail |" in text
    assert "RuntimeError: CUDA out of memory" in text
    assert "needs resume for a third epoch" in text
    assert "- torch: x" in text
