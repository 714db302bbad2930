"""`digit-bench memory`: how much memory each CPU form of an export (ONNX Runtime, OpenVINO)
needs.

Each form and batch size runs in a fresh process (the backend digit-read opens, so int8 on ONNX
Runtime gets its CPU form; one batch of real canvases), which reports its resident set after
loading and its peak: measured in one process after another, a form's peak would hide behind the
previous one's, and allocators keep what they took.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from digit_reader.benchmarks import inputs
from digit_reader.benchmarks.forms import cpu_forms
from digit_reader.benchmarks.machine import describe_machine, machine
from digit_reader.benchmarks.report import markdown_table, write
from digit_reader.runtime.console import err
from digit_reader.runtime.contract import CARD_NAME, Form
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.modelcard import ModelCard

HEADERS = ["form", "batch", "after load MB", "peak MB", "peak MB per image"]


def _rss_mb() -> float:
    """This process's peak resident set so far, in MB.

    /proc's VmHWM belongs to the process image; getrusage's ru_maxrss survives exec, so a
    child would report its parent's peak if that was higher (other systems: ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(path: Path, engine: str, precision: str, canvases: Path) -> dict:
    """In this process: load the form, run one batch; the peak resident set before and after."""
    from digit_reader.benchmarks.forms import Candidate

    images = np.load(canvases)
    card = ModelCard.load(path.parent / CARD_NAME)
    backend = Candidate(Form(engine, precision, path.name), path).open(card, "cpu", len(images))
    loaded = _rss_mb()
    backend(images)
    return {"after_load_mb": loaded, "peak_mb": _rss_mb()}


def run(export_dir: Path, wanted: set, batches: list[int], data) -> dict:
    from digit_reader.train import samples

    card = ModelCard.load(export_dir / CARD_NAME)
    forms = cpu_forms(export_dir, wanted)
    if not forms:
        raise UserError(
            f"{export_dir}: no ONNX form to measure (asked for {sorted(f.label for f in wanted)})"
        )
    rows = []
    with tempfile.TemporaryDirectory(prefix="digit-bench-") as tmp:
        paths, origin = samples.sample_paths(data, max(batches), cache_dir=Path(tmp))
        for batch in batches:
            canvases = Path(tmp) / f"canvases-{batch}.npy"
            np.save(canvases, inputs.canvases(card, inputs.batch_of(paths, batch)))
            for c in forms:
                err(f"memory: {c.form.label} batch {batch}")
                args = [str(c.path), c.form.engine, c.form.precision, str(canvases)]
                cmd = [sys.executable, "-m", "digit_reader.benchmarks.memory", *args]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    raise UserError(f"memory: {c.form.label} batch {batch} failed: {done.stderr}")
                rows.append({"form": c.form.label, "batch": batch, **json.loads(done.stdout)})
    return {
        "benchmark": "memory",
        "export": str(export_dir),
        "canvas": list(card.canvas),
        "images": origin,
        "rows": rows,
        "machine": machine(),
    }


def markdown(result: dict) -> str:
    table = [
        [
            r["form"],
            r["batch"],
            round(r["after_load_mb"]),
            round(r["peak_mb"]),
            round(r["peak_mb"] / r["batch"]),
        ]
        for r in result["rows"]
    ]
    m = result["machine"]
    head = (
        f"Peak resident memory of one process per form and batch (CPU) at canvas "
        f"{result['canvas'][0]}x{result['canvas'][1]} ({describe_machine(m)}): after "
        f"loading the model, and after one batch."
    )
    return head + "\n\n" + markdown_table(HEADERS, table)


def main(export_dir, forms, batches, data, out) -> int:
    if not (export_dir / CARD_NAME).is_file():
        raise UserError(f"{export_dir}: no {CARD_NAME}; pass a digit-export directory", code=2)
    result = run(export_dir, forms, batches, data)
    md = markdown(result)
    js, mdp = write(out or export_dir, "memory", result, md)
    print(md)
    err(f"memory: wrote {js} and {mdp}")
    return 0


if __name__ == "__main__":  # the measuring child: FILE ENGINE PRECISION CANVASES.npy
    print(json.dumps(measure(Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4]))))
