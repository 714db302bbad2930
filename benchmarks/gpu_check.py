"""`make gpu-check`: every GPU path of digit-reader on an NVIDIA machine, in one report.

The development machines have no GPU, so the CUDA training, ONNX Runtime CUDA and TensorRT
paths are written blind; this is the one command that shows, on a machine with a GPU, whether
they work: the GPU-marked tests, nano trained with AMP on CUDA and resumed, the export with
TensorRT engines, a read through the engine, and parity and latency over every form. Each step
is a CLI run as a user would run it; its pass/fail, time and last lines go to gpu-check.md
together with the versions and the GPU. A step whose input failed is skipped, not run.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from digit_reader.runtime import atomic

NO_GPU = "gpu-check: no NVIDIA GPU here (nvidia-smi lists none); run it on a machine with one"


@dataclass
class Step:
    name: str
    argv: list[str]
    needs: tuple[str, ...] = ()  # steps whose output this one reads


@dataclass
class Outcome:
    name: str
    status: str  # "pass", "fail" or "skipped"
    seconds: float = 0.0
    detail: str = ""  # the last lines of the output on failure, the reason when skipped
    argv: list[str] = field(default_factory=list)


def plan(work: Path, repo: Path | None, bin_dir: Path) -> list[Step]:
    """The steps, in order, writing under `work`; `repo` is the clone holding tests/ (or None)."""
    data, run, export, export8 = work / "data", work / "run", work / "export", work / "export-int8"

    def tool(name: str, *args) -> list[str]:
        return [str(bin_dir / name), *map(str, args)]

    tests = (
        [sys.executable, "-m", "pytest", "-m", "gpu or tensorrt", "-q", "-rs", str(repo / "tests")]
        if repo is not None
        else []
    )
    return [
        Step("GPU and TensorRT tests", tests),
        Step("synthetic data", tool("digit-data", "synth", "--out", data, "--train", 1000,
                                    "--valid", 200, "--test", 48, "--seed", 0, "--overwrite")),
        Step("train nano, 2 epochs, CUDA + AMP", tool(
            "digit-train", "--data", data, "--out", run, "--preset", "nano", "--device", "cuda",
            "--epochs", 2, "--quiet"), needs=("synthetic data",)),
        Step("resume for a third epoch", tool(
            "digit-train", "--resume", run, "--epochs", 3, "--device", "cuda", "--quiet"),
            needs=("train nano, 2 epochs, CUDA + AMP",)),
        Step("export fp32 + fp16 with engines", tool(
            "digit-export", run, "--out", export, "--fp16", "--engine", "--device", "cuda"),
            needs=("resume for a third epoch",)),
        Step("read through the engine", tool(
            "digit-read", data / "test", "--model", export, "--device", "cuda"),
            needs=("export fp32 + fp16 with engines",)),
        Step("parity of every form", tool(
            "digit-bench", "parity", "--run", run, "--export", export, "--data", data,
            "--device", "cuda"), needs=("export fp32 + fp16 with engines",)),
        Step("latency of every form", tool(
            "digit-bench", "latency", "--export", export, "--data", data, "--device", "cuda",
            "--batch", "1,8,32"), needs=("export fp32 + fp16 with engines",)),
        # three epochs read digits too poorly for int8's 98 % gate: this checks that the int8
        # engine builds, runs and reports its agreement, not the bar (the demo's model meets it)
        Step("export int8 with its engine", tool(
            "digit-export", run, "--out", export8, "--int8", "--engine", "--device", "cuda",
            "--int8-min-agreement", 0, "--int8-max-accuracy-drop", 1),
            needs=("resume for a third epoch",)),
        Step("latency of the int8 forms", tool(
            "digit-bench", "latency", "--export", export8, "--data", data, "--device", "cuda",
            "--batch", "1,8"), needs=("export int8 with its engine",)),
    ]  # fmt: skip


def _subprocess(argv: list[str]) -> tuple[int, str]:
    proc = subprocess.run(argv, capture_output=True, text=True)
    return proc.returncode, (proc.stdout + proc.stderr)


def run_steps(
    steps: list[Step],
    runner: Callable[[list[str]], tuple[int, str]] = _subprocess,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
    tail: int = 15,
) -> list[Outcome]:
    """Run each step whose needs passed; a step with no command (nothing to run) is skipped."""
    status: dict[str, str] = {}
    outcomes = []
    for step in steps:
        failed = [n for n in step.needs if status.get(n) != "pass"]
        if failed or not step.argv:
            why = f"needs {', '.join(failed)}" if failed else "nothing to run (no tests/ here)"
            outcome = Outcome(step.name, "skipped", detail=why, argv=step.argv)
        else:
            log(f"gpu-check: {step.name} ...")
            t0 = time.perf_counter()
            code, output = runner(step.argv)
            seconds = time.perf_counter() - t0
            lines = output.strip().splitlines()
            detail = "\n".join(lines[-tail:]) if code else (lines[-1] if lines else "")
            outcome = Outcome(
                step.name, "pass" if code == 0 else "fail", seconds, detail, step.argv
            )
        status[step.name] = outcome.status
        log(f"gpu-check: {step.name}: {outcome.status}")
        outcomes.append(outcome)
    return outcomes


def environment() -> dict:
    """Versions and the GPU, as this machine reports them (missing pieces say so)."""
    from importlib import metadata

    env = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("torch", "torchvision", "onnxruntime-gpu", "onnxruntime", "tensorrt",
                 "cuda-python", "cuda-bindings", "digit-reader"):  # fmt: skip
        try:
            env[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "--query-gpu=name,driver_version,memory.total,compute_cap"
        out = subprocess.run([smi, query, "--format=csv,noheader"], capture_output=True, text=True)
        env["gpu"] = out.stdout.strip() or out.stderr.strip()
    return env


def has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    out = subprocess.run([smi, "-L"], capture_output=True, text=True)
    return out.returncode == 0 and "GPU" in out.stdout


def report(outcomes: list[Outcome], env: dict) -> str:
    passed = sum(o.status == "pass" for o in outcomes)
    lines = [
        "# gpu-check",
        "",
        f"{passed} of {len(outcomes)} steps passed on {env.get('gpu', 'an unknown GPU')}.",
        "",
        "| step | result | seconds |",
        "|---|---|---|",
    ]
    lines += [f"| {o.name} | {o.status} | {o.seconds:.1f} |" for o in outcomes]
    lines += ["", "## Versions", ""] + [f"- {k}: {v}" for k, v in env.items()]
    for o in outcomes:
        if o.status != "pass" or o.detail:
            lines += ["", f"## {o.name}: {o.status}", "", f"`{' '.join(o.argv)}`", ""]
            lines += ["```", o.detail, "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check.md"))
    parser.add_argument("--work", type=Path, default=Path("gpu-check"))
    args = parser.parse_args(argv)
    if not has_gpu():
        print(NO_GPU, file=sys.stderr)
        return 2
    repo = Path(__file__).resolve().parents[1]
    steps = plan(
        args.work, repo if (repo / "tests").is_dir() else None, Path(sys.executable).parent
    )
    outcomes = run_steps(steps)
    atomic.write_text(args.out, report(outcomes, environment()))
    failed = [o.name for o in outcomes if o.status != "pass"]
    print(f"gpu-check: {len(outcomes) - len(failed)}/{len(outcomes)} passed; report {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
