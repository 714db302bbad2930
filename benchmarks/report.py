"""Benchmark results as JSON (for machines) and Markdown (for the README), written atomically."""

from __future__ import annotations

import json
from pathlib import Path

from digit_reader.runtime import atomic


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def cell(v) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            if abs(v) >= 1e4:
                return f"{v:.0f}"
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write(out_dir: Path, name: str, result: dict, markdown: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / f"{name}.json", out_dir / f"{name}.md"
    atomic.write_text(js, json.dumps(result, indent=2) + "\n")
    atomic.write_text(md, markdown + "\n")
    return js, md
