"""metrics.jsonl: one JSON record per training step and per epoch, appended as they happen.

Rank 0 writes it; a resumed run first cuts it back to its checkpoint's step, since the steps
after that will be redone. The figures (train/plots.py) and the speed benchmark read it.
"""

from __future__ import annotations

import json
from pathlib import Path

from digit_reader.runtime import atomic

METRICS = "metrics.jsonl"


def read_records(run_dir: Path, up_to_step: int | None = None) -> list[dict]:
    path = run_dir / METRICS
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            if up_to_step is None or r["step"] <= up_to_step:
                out.append(r)
    return out


class MetricsLog:
    """metrics.jsonl, appended line by line by rank 0 (a log, not a document)."""

    def __init__(self, run_dir: Path, records: list[dict]):
        self.path = run_dir / METRICS
        self.records = records
        # a resumed run drops lines written after its checkpoint: they will be redone
        atomic.write_text(self.path, "".join(json.dumps(r) + "\n" for r in records))
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: dict) -> None:
        self.records.append(record)
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()
