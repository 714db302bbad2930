"""A checklist of commands run one after another, each with its own timeout, each skipped (not
failed) when a package it needs is missing or an earlier step it needs did not pass, and a
report (Markdown and JSON) rewritten after every step, so a run killed at any point leaves
what it measured. `make gpu-check` is one such checklist (benchmarks/gpu_check.py).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from digit_reader.runtime import atomic


@dataclass
class Step:
    name: str
    argv: list[str]
    needs: tuple[str, ...] = ()  # earlier steps whose output this one reads
    requires: tuple[str, ...] = ()  # packages (import names) it cannot run without
    timeout_s: float = 60.0
    figures: Path | None = None  # a JSON file the step writes; its contents join the report


@dataclass
class Outcome:
    name: str
    status: str  # "pass", "fail", "timeout" or "skipped"
    seconds: float = 0.0
    detail: str = ""  # the last lines of the output on failure, the reason when skipped
    argv: list[str] = field(default_factory=list)
    figures: dict | None = None


def missing(package: str) -> str | None:
    """None if `package` imports; else "X not installed" or "X cannot load: reason"."""
    try:
        importlib.import_module(package)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] == package.split(".")[0]:
            return f"{package} not installed"
        return f"{package} cannot load: {e}"
    except Exception as e:  # an ImportError from a missing native library, and the like
        return f"{package} cannot load: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    return None


def run_process(argv: list[str], timeout_s: float) -> tuple[int | None, str]:
    """(exit code, or None on timeout; stdout + stderr). A timed-out step's whole process
    group is killed: its children (torchrun's ranks, a DataLoader's workers) go too."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out


def _skip_reason(step: Step, status: dict, check: Callable[[str], str | None]) -> str | None:
    if not step.argv:
        return "nothing to run"
    failed = [n for n in step.needs if status.get(n) != "pass"]
    if failed:
        return f"needs {', '.join(failed)}"
    problems = [p for p in (check(r) for r in step.requires) if p]
    return "; ".join(problems) or None


def run_step(step: Step, runner, tail: int = 15) -> Outcome:
    """Run one step: pass (exit 0), fail (its last lines kept) or timeout."""
    t0 = time.perf_counter()
    code, output = runner(step.argv, step.timeout_s)
    seconds = time.perf_counter() - t0
    lines = output.strip().splitlines()
    if code is None:
        status, detail = (
            "timeout",
            f"stopped after {step.timeout_s:g} s\n" + "\n".join(lines[-tail:]),
        )
    elif code:
        status, detail = "fail", "\n".join(lines[-tail:])
    else:
        status, detail = "pass", lines[-1] if lines else ""
    figures = None
    if status == "pass" and step.figures and step.figures.is_file():
        figures = json.loads(step.figures.read_text(encoding="utf-8"))
    return Outcome(step.name, status, seconds, detail, step.argv, figures)


def run_steps(
    steps: list[Step],
    runner: Callable[[list[str], float], tuple[int | None, str]] = run_process,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
    check: Callable[[str], str | None] = missing,
    after_each: Callable[[list[Outcome]], None] = lambda outcomes: None,
    budget_s: float | None = None,
) -> list[Outcome]:
    """Every step in order; a failed or skipped one never stops the next. `after_each` gets
    the outcomes so far after every step (the report is rewritten there). With `budget_s`, no
    step runs past the whole check's budget: each gets at most the time left."""
    status: dict[str, str] = {}
    outcomes: list[Outcome] = []
    end = None if budget_s is None else time.perf_counter() + budget_s
    for step in steps:
        left = None if end is None else end - time.perf_counter()
        why = _skip_reason(step, status, check)
        if not why and left is not None and left < 1:
            why = f"the check's budget of {budget_s:g} s is spent"
        if why:
            outcome = Outcome(step.name, "skipped", detail=why, argv=step.argv)
        else:
            log(f"gpu-check: {step.name} ...")
            timeout = step.timeout_s if left is None else min(step.timeout_s, left)
            outcome = run_step(dataclasses.replace(step, timeout_s=timeout), runner)
        status[step.name] = outcome.status
        log(f"gpu-check: {step.name}: {outcome.status}")
        outcomes.append(outcome)
        after_each(outcomes)
    return outcomes


def write_report(outcomes: list[Outcome], env: dict, md: Path, render) -> None:
    """The report as Markdown (`render(outcomes, env)`) and JSON beside it, both atomic."""
    atomic.write_text(md, render(outcomes, env))
    data = {"environment": env, "steps": [asdict(o) for o in outcomes]}
    atomic.write_text(md.with_suffix(".json"), json.dumps(data, indent=2) + "\n")
