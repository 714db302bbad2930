"""`digit-bench profile`: where ONNX Runtime's time goes, op type by op type, for each ONNX form
of an export (CPU), from ORT's own profiler, with the integer share of each form's Conv/Gemm/
MatMul work. `--as-is` adds the int8 file run as it is written (TensorRT's graph), which shows
why the reader rewrites it for the CPU.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from digit_reader.benchmarks import inputs, ort_profile
from digit_reader.benchmarks.forms import cpu_forms
from digit_reader.benchmarks.machine import describe_machine, machine
from digit_reader.benchmarks.report import markdown_table, write
from digit_reader.runtime.console import err
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.modelcard import CARD_NAME, ModelCard
from digit_reader.train import samples

TOP = 12  # op types shown; the rest are summed as "other"


def run(export_dir: Path, wanted: set, batch: int, runs: int, data, as_is: bool) -> dict:
    card = ModelCard.load(export_dir / CARD_NAME)
    todo = []
    for c in cpu_forms(export_dir, wanted):
        if c.form.engine != "onnxruntime":
            continue  # ONNX Runtime's profiler: its forms only
        todo.append((c, True))
        if as_is and c.form.precision == "int8":
            todo.append((c, False))
    if not todo:
        raise UserError(
            f"{export_dir}: no ONNX form to profile (asked for {sorted(f.label for f in wanted)})"
        )
    with tempfile.TemporaryDirectory(prefix="digit-bench-") as tmp:
        paths, origin = samples.sample_paths(data, batch, cache_dir=Path(tmp))
        canvases = inputs.canvases(card, inputs.batch_of(paths, batch))
        profiles = []
        for c, cpu_form in todo:
            err(f"profile: {c.form.label}{'' if cpu_form else ' (file as is)'}, batch {batch}")
            profiles.append(
                ort_profile.profile(c.path, c.form.precision, canvases, runs, None, cpu_form)
            )
    return {
        "benchmark": "profile",
        "export": str(export_dir),
        "canvas": list(card.canvas),
        "batch": batch,
        "runs": runs,
        "images": origin,
        "profiles": profiles,
        "machine": machine(),
    }


def markdown(result: dict) -> str:
    profiles = result["profiles"]
    ms = [{r["op"]: r["ms"] for r in p["by_op"]} for p in profiles]
    ops = sorted({op for m in ms for op in m}, key=lambda op: -max(m.get(op, 0.0) for m in ms))
    headers = ["op type"] + [f"{p['form']} {unit}" for p in profiles for unit in ("ms", "%")]

    def cells(values: list[float]) -> list:
        out = []
        for v, p in zip(values, profiles, strict=True):
            out += [round(v, 1), round(100 * v / p["total_ms"], 1) if p["total_ms"] else None]
        return out

    table = [[op, *cells([m.get(op, 0.0) for m in ms])] for op in ops[:TOP]]
    if len(ops) > TOP:
        table.append(["other", *cells([sum(m.get(op, 0.0) for op in ops[TOP:]) for m in ms])])
    table.append(["total", *cells([p["total_ms"] for p in profiles])])
    m = result["machine"]
    head = (
        f"ONNX Runtime's time by op type at canvas {result['canvas'][0]}x{result['canvas'][1]}, "
        f"batch {result['batch']} ({describe_machine(m)}): ms per run, summed over "
        f"each op type's kernels, mean of {result['runs']} runs after a warm-up."
    )
    notes = [ort_profile.integer_line(p["form"], p) for p in profiles]
    return head + "\n\n" + markdown_table(headers, table) + "".join(f"\n\n{n}" for n in notes)


def main(export_dir, forms, batch, runs, data, as_is, out) -> int:
    if not (export_dir / CARD_NAME).is_file():
        raise UserError(f"{export_dir}: no {CARD_NAME}; pass a digit-export directory", code=2)
    result = run(export_dir, forms, batch, runs, data, as_is)
    md = markdown(result)
    js, mdp = write(out or export_dir, "profile", result, md)
    print(md)
    err(f"profile: wrote {js} and {mdp}")
    return 0
