"""What comes back from `digit-read --ray`'s actors, and what the driver makes of it: the
prediction columns (one schema for the actors' tables and the Parquet shards), rows back in
input order (`InOrder`), and the Parquet shards of `--out DIR`.

pyarrow is imported inside functions only: this module imports without it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SHARD_ROWS = 1000  # rows per Parquet shard of --out
PREDICTION_COLUMNS = ("number", "boxes", "scores", "digits")


def prediction_fields() -> list:
    """One image's prediction as Arrow columns: the number, and every detection."""
    import pyarrow as pa

    return [
        ("number", pa.string()),
        ("boxes", pa.list_(pa.list_(pa.float32(), 4))),
        ("scores", pa.list_(pa.float32())),
        ("digits", pa.list_(pa.int8())),
    ]


def result_schema():
    """The model stage's table: the input's index, its prediction, or the ImageError's reason
    (the driver names the path)."""
    import pyarrow as pa

    return pa.schema([("idx", pa.int64()), *prediction_fields(), ("error", pa.string())])


def shard_schema():
    """A Parquet shard of --out: the image's id and path, and its prediction."""
    import pyarrow as pa

    return pa.schema([("image_id", pa.string()), ("path", pa.string()), *prediction_fields()])


@dataclass
class Result:
    """One image's prediction as it comes back from an actor (what ResultWriter reads)."""

    number: str
    boxes: list
    scores: list
    digits: list


class InOrder:
    """Rows keyed by input index back in input order, each index exactly once."""

    def __init__(self, n: int):
        self.n, self.next, self.pending, self.duplicates = n, 0, {}, 0

    def push(self, idx: int, row) -> Iterator[tuple[int, object]]:
        """Take one row; yield every row that is now next in input order."""
        if idx < self.next or idx in self.pending or not 0 <= idx < self.n:
            self.duplicates += 1  # a retried block delivered again: ignored
            return
        self.pending[idx] = row
        while self.next in self.pending:
            yield self.next, self.pending.pop(self.next)
            self.next += 1

    def rest(self) -> Iterator[tuple[int, object | None]]:
        """At the end: every index not emitted yet, in order, with its row or None (no result
        ever came, e.g. the job failed)."""
        for idx in range(self.next, self.n):
            yield idx, self.pending.pop(idx, None)
        self.next = self.n


class ParquetShards:
    """--out DIR: part-00000.parquet, ... of SHARD_ROWS rows in input order, each written
    atomically; shards of an earlier, longer run are removed at the end."""

    def __init__(self, out_dir: str | os.PathLike, rows: int = SHARD_ROWS):
        self.dir, self.rows, self.buffer, self.count = Path(out_dir), rows, [], 0
        self.dir.mkdir(parents=True, exist_ok=True)

    def add(self, image_id, path, result: Result) -> None:
        row = {"image_id": str(image_id), "path": str(path)}
        self.buffer.append(row | {name: getattr(result, name) for name in PREDICTION_COLUMNS})
        if len(self.buffer) >= self.rows:
            self._write()

    def _write(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from digit_reader.runtime.atomic import atomic_path

        with atomic_path(self.dir / f"part-{self.count:05d}.parquet") as tmp:
            pq.write_table(pa.Table.from_pylist(self.buffer, shard_schema()), tmp)
        self.buffer, self.count = [], self.count + 1

    def close(self) -> None:
        if self.buffer:
            self._write()
        for old in self.dir.glob("part-*.parquet"):
            stem = old.stem.removeprefix("part-")
            if stem.isdigit() and int(stem) >= self.count:
                old.unlink()
