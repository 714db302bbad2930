"""`make gpu-check`: its plan, step runner (timeouts, skipping, partial reports) and offline
install, with the GPU steps faked (no GPU here); the real steps are the project's CLIs, run on
an NVIDIA machine only."""

import json
import os
import subprocess
import sys
from pathlib import Path

from digit_reader.benchmarks import gpu_check, gpu_install
from digit_reader.benchmarks.step_runner import Step, run_process, run_steps, write_report

ROOT = Path(__file__).resolve().parents[1]


def test_without_a_gpu_make_stops_at_once_with_one_line_and_exit_2():
    proc = subprocess.run(["make", "-s", "gpu-check"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "no NVIDIA GPU here" in proc.stderr
    assert not (ROOT / ".venv-gpu").exists()  # stopped before installing anything


def test_make_runs_the_current_python_unless_venv_1_asks_for_a_fresh_venv(tmp_path):
    """The recipe make would run on a GPU machine (a fake nvidia-smi lists one): offline by
    default, the venv only with VENV=1 (the demo's VENV=.venv must not switch it on)."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\necho "GPU 0: NVIDIA H200"\n')
    smi.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}

    def recipe(*args):
        done = subprocess.run(["make", "-n", "-s", "gpu-check", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    install, check = recipe()
    assert install.split()[1:] == ["benchmarks/gpu_install.py", "--python", "python3"]
    assert check.startswith("python3 -m digit_reader.benchmarks.gpu_check")
    install, check = recipe("VENV=1", "WHEELS=/w")
    assert install.split()[-4:] == ["--wheels", "/w", "--venv", ".venv-gpu"]
    assert check.startswith(".venv-gpu/bin/python -m digit_reader.benchmarks.gpu_check")


def test_the_runner_also_refuses_without_a_gpu(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(gpu_check, "has_gpu", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "r.md")]) == 2
    assert capsys.readouterr().err == gpu_check.NO_GPU + "\n"
    assert not (tmp_path / "r.md").exists()


def test_steps_cover_every_gpu_path_in_order_and_chain_their_inputs(tmp_path):
    steps = gpu_check.plan(tmp_path, ROOT, Path("/venv/bin"))
    by_name = {s.name: s for s in steps}
    argv = [" ".join(s.argv) for s in steps]
    assert "gpu_env" in argv[0]  # the environment first: the most valuable evidence
    assert "-m gpu or tensorrt" in argv[1]
    order = [
        lambda a: "digit-train" in a and "--device cuda" in a and "--epochs 2" in a,
        lambda a: "--resume" in a and "--epochs 3" in a,
        lambda a: "--device cpu" in a and "--epochs 1" in a,
        lambda a: "--resume" in a and "cpu-run" in a and "--device cuda" in a,
        lambda a: "torchrun" in a and "--nproc_per_node=1" in a,
        lambda a: "--preset all" in a and "--no-pretrained" in a and "--batch-size 8" in a,
        lambda a: "digit-bench eager" in a and "--batch 1,8" in a,
        lambda a: "digit-export" in a and "--int8" in a and "--device cuda" in a,
        lambda a: "digit-read" in a and "--engine tensorrt" in a,
        lambda a: "latency" in a and "--device cuda" in a,
    ]
    where = [next(i for i, a in enumerate(argv) if test(a)) for test in order]
    assert where == sorted(where)
    for step in steps:  # every dependency is an earlier step
        assert all(n in by_name and steps.index(by_name[n]) < steps.index(step) for n in step.needs)
    assert all(s.timeout_s <= 300 for s in steps)
    assert gpu_check.plan(tmp_path, None, Path("/b"))[1].argv == []  # no tests/ in a wheel


def test_a_failed_step_skips_what_depends_on_it_and_a_missing_package_only_its_steps(tmp_path):
    steps = gpu_check.plan(tmp_path, ROOT, Path("/venv/bin"))
    fail_at = "nano, --resume for a third epoch"

    def runner(argv, timeout):
        failing = any(s.name == fail_at and s.argv == argv for s in steps)
        return (1, "Traceback ...\nRuntimeError: CUDA out of memory") if failing else (0, "ok")

    def check(package):
        return "tensorrt not installed" if package == "tensorrt" else None

    outcomes = run_steps(steps, runner, log=lambda m: None, check=check)
    status = {o.name: o.status for o in outcomes}
    assert status["nano, 2 epochs, CUDA + AMP"] == "pass"
    assert status[fail_at] == "fail"
    assert status["export nano on CUDA: fp32 + int8, engines where TensorRT is"] == "skipped"
    assert status["latency of every form, CUDA"] == "skipped"
    assert status["torchrun --nproc_per_node=1, NCCL"] == "pass"  # a failure stops nothing else
    assert status["R101-FPN 800x1344, ~100 training steps, batch 8, AMP"] == "pass"
    text = gpu_check.report(outcomes, {"gpu": "NVIDIA A10"})
    assert f"| {fail_at} | fail |" in text
    assert "RuntimeError: CUDA out of memory" in text
    assert "needs nano, --resume for a third epoch" in text


def test_a_missing_package_is_named_and_its_step_skipped(tmp_path):
    steps = [Step("a", ["true"], requires=("tensorrt",)), Step("b", ["true"])]

    def check(package):
        return f"{package} cannot load: libnvinfer.so.11: cannot open"

    outcomes = run_steps(steps, lambda argv, t: (0, ""), log=lambda m: None, check=check)
    assert [(o.status, o.detail) for o in outcomes] == [
        ("skipped", "tensorrt cannot load: libnvinfer.so.11: cannot open"),
        ("pass", ""),
    ]
    assert gpu_check.requirement_problem("no_such_package_here") == (
        "no_such_package_here not installed"
    )


def test_a_step_over_its_timeout_is_stopped_with_its_children(tmp_path):
    marker = tmp_path / "child-still-ran"
    script = f"sleep 5 && touch {marker}"
    code, output = run_process(["sh", "-c", f"echo started; ({script}) & wait"], timeout_s=0.5)
    assert code is None and "started" in output
    subprocess.run(["sleep", "6"])
    assert not marker.exists()  # the whole process group went
    steps = [Step("slow", ["sleep", "5"], timeout_s=0.3), Step("next", ["true"])]
    outcomes = run_steps(steps, log=lambda m: None, check=lambda p: None)
    assert [o.status for o in outcomes] == ["timeout", "pass"]
    assert outcomes[0].seconds < 3 and "stopped after 0.3 s" in outcomes[0].detail


def test_the_whole_check_keeps_to_its_budget():
    steps = [Step("a", ["sleep", "5"], timeout_s=60), Step("b", ["true"]), Step("c", ["true"])]
    outcomes = run_steps(steps, log=lambda m: None, check=lambda p: None, budget_s=1.5)
    assert [o.status for o in outcomes] == ["timeout", "skipped", "skipped"]
    assert outcomes[0].seconds < 3 and "budget of 1.5 s is spent" in outcomes[1].detail


def test_the_report_is_rewritten_after_every_step(tmp_path):
    """Killed at any step, the run leaves the report of every step before it."""
    md = tmp_path / "gpu-check.md"
    figures = tmp_path / "summary.json"
    figures.write_text(json.dumps({"train_images_per_s": 50.0, "peak_gpu_mb": 10240}))
    steps = [
        Step("first", ["a"]),
        Step("R101-FPN 800x1344, ~100 training steps, batch 8, AMP", ["b"], figures=figures),
        Step("third", ["c"]),
    ]
    seen = []

    def runner(argv, timeout):
        if md.is_file():
            seen.append(json.loads(md.with_suffix(".json").read_text())["steps"])
        return 0, "ok"

    def save(outcomes):
        write_report(outcomes, {"gpu": "X"}, md, gpu_check.report)

    run_steps(steps, runner, log=lambda m: None, check=lambda p: None, after_each=save)
    assert [[s["name"] for s in done] for done in seen] == [["first"], ["first", steps[1].name]]
    text = md.read_text()
    assert "3 of 3 steps passed" in text
    assert "50.0 images/s, peak GPU memory 10.0 GiB" in text
    assert "would take 3.3 h" in text  # 20 epochs x 30,000 images at 50 images/s


def test_offline_install_uses_this_python_and_only_the_wheels_directory(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl").write_bytes(b"")
    cmds = gpu_install.commands("/gpu/python", wheels, None, ["pycocotools", "onnxruntime-gpu"])
    text = [" ".join(c) for c, _ in cmds]
    assert text[0] == (
        f"/gpu/python -m pip install -q --no-deps --no-build-isolation -e {gpu_install.ROOT}"
    )
    assert all(
        "--no-index" in t and f"--find-links {wheels}" in t for t in text[1:] if " install " in t
    )
    assert text[2] == "/gpu/python -m pip uninstall -q -y onnxruntime"  # before its GPU build
    assert [may_fail for _, may_fail in cmds] == [False, True, True, True]
    assert gpu_install.commands("/gpu/python", None, None, ["tensorrt"]) == cmds[:1]  # no DIR
    online = " ".join(gpu_install.commands("/p", None, tmp_path / "venv", [])[1][0])
    assert "torch torchvision" in online and "[gpu,train,export,dev]" in online


def test_install_refuses_a_python_without_cuda_torch_with_one_line(tmp_path):
    script = ROOT / "benchmarks" / "gpu_install.py"
    (tmp_path / "torch.py").write_text("raise ImportError('no torch in this interpreter')\n")
    done = subprocess.run(
        [sys.executable, str(script), "--python", sys.executable, "--dry-run"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)},
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "has no CUDA build of torch" in done.stderr and "VENV=1" in done.stderr


def test_a_dry_run_with_a_cuda_torch_installs_only_from_the_wheels(tmp_path):
    import torch

    if torch.version.cuda is None:  # this venv's torch is PyPI's CUDA build on x86_64
        return
    script = ROOT / "benchmarks" / "gpu_install.py"
    args = [sys.executable, str(script), "--python", sys.executable, "--dry-run"]
    done = subprocess.run([*args, "--wheels", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "--no-deps --no-build-isolation -e" in lines[0]
    assert all("--no-index" in line for line in lines[1:])
