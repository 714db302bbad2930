"""`digit-bench memory`: how much memory each ONNX form of an export needs on the CPU.

Each form and batch size runs in a fresh process (the reader's ONNX Runtime backend, so int8
gets its CPU form, one batch of real canvases), which reports its resident set after loading
and its peak: measured in one process after another, a form's peak would hide behind the
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

from digit_reader.benchmarks.forms import onnx_forms
from digit_reader.benchmarks.machine import machine
from digit_reader.benchmarks.report import markdown_table, write
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.modelcard import CARD_NAME, ModelCard

HEADERS = ["form", "batch", "after load MB", "peak MB", "peak MB per image"]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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


def measure(path: Path, precision: str, canvases: Path) -> dict:
    """In this process: load the form, run one batch; the peak resident set before and after."""
    from digit_reader.runtime.ort_backend import OrtBackend

    images = np.load(canvases)
    backend = OrtBackend(path, "cpu", precision=precision, log=lambda _: None)
    loaded = _rss_mb()
    backend(images)
    return {"after_load_mb": loaded, "peak_mb": _rss_mb()}


def run(export_dir: Path, wanted: set, batches: list[int], data) -> dict:
    from digit_reader.train import samples

    card = ModelCard.load(export_dir / CARD_NAME)
    forms = onnx_forms(export_dir, wanted)
    if not forms:
        raise UserError(f"{export_dir}: no ONNX form to measure (asked for {sorted(wanted)})")
    rows = []
    with tempfile.TemporaryDirectory(prefix="digit-bench-") as tmp:
        paths, origin = samples.sample_paths(data, max(batches), cache_dir=Path(tmp))
        for batch in batches:
            canvases = Path(tmp) / f"canvases-{batch}.npy"
            picked = [paths[i % len(paths)] for i in range(batch)]
            np.save(canvases, samples.canvases(picked, card.canvas))
            for form in forms:
                _log(f"memory: {form.name} batch {batch}")
                args = [str(form.path), form.precision, str(canvases)]
                cmd = [sys.executable, "-m", "digit_reader.benchmarks.memory", *args]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    raise UserError(f"memory: {form.name} batch {batch} failed: {done.stderr}")
                rows.append({"form": form.name, "batch": batch, **json.loads(done.stdout)})
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
        f"Peak resident memory of one process per form and batch (ONNX Runtime, CPU) at canvas "
        f"{result['canvas'][0]}x{result['canvas'][1]} ({m['cpu']}, {m['cores']} cores): after "
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
    _log(f"memory: wrote {js} and {mdp}")
    return 0


if __name__ == "__main__":  # the measuring child: FILE PRECISION CANVASES.npy
    print(json.dumps(measure(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))))
