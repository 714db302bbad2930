"""`digit-read PATH... --ray [ADDRESS]`: bulk reading on Ray Data, one machine or a cluster.

Install the `ray` extra (`pip install 'digit-reader[cpu,ray]'`). Ray and pyarrow are imported
inside functions only: this module imports without them, like the rest of the runtime.

The pipeline, all scheduling left to Ray Data (no queue or worker pool of our own):

1. The driver lists the inputs (`collect_inputs`: files, directories, `--from-list` paths and
   URIs) and numbers them: rows (idx, path).
2. Read stage (`read_files`, Ray Data tasks of READ_CPUS each): the bytes of each file, or its
   error reason. A bad file is a row with an error, never a failed job.
3. Model stage (`ReaderActor`, an actor pool of `--actors`): each actor holds the runtime's
   Reader (ONNX Runtime or TensorRT) and puts the bytes through the same preprocessing contract
   (open_rgb of an EncodedImage: the file's pixels and the file's error messages), batching,
   inference and decoding rule (Reader.iter_read) as plain digit-read.
4. The driver restores input order by idx (`InOrder`: each image exactly once, whatever order
   blocks arrive in and however often Ray retried them) and hands the rows to the same
   ResultWriter as plain digit-read (pred.csv on stdout, --json, error lines, summary), plus
   Parquet shards for `--out DIR`.

Resources (`plan`): Ray Data starts the actor pool first; if the actors hold every CPU a read
task waits forever (ray-project/ray#44687). So actors get fractional CPUs such that on every
node READ_CPUS stay free for read tasks, and each actor runs as many ONNX Runtime threads as the
CPU share Ray granted it (`ort_threads`). A stall still ends the job after
STALL_TIMEOUT_S instead of hanging.

Fault tolerance is Ray Data's: actors of an actor-pool map are restarted and their tasks
retried (max_restarts = max_task_retries = -1 by default in Ray 2.60); InOrder drops a row that
arrives twice and the driver names any image that never got a result.

stdout carries only the CSV: Ray's driver prints raylet messages ("(raylet) A worker died")
to sys.stdout, so before Ray is imported the CSV gets a private duplicate of fd 1 and fd 1
itself points at stderr (`guard_stdout`).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click

from digit_reader.runtime.errors import ImageError, UserError

READ_CPUS = 0.25  # what a read task asks for, and what the actors must leave free on each node
STALL_TIMEOUT_S = 600  # Ray Data fails a job that makes no progress this long
PROGRESS_EVERY_S = 2.0
SHARD_ROWS = 1000  # rows per Parquet shard of --out
LOCAL = "local"
_ADDRESS = re.compile(r"^(auto|local|ray://\S+|[\w.\-]+:\d+|\[[0-9a-fA-F:.]+\]:\d+)$")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_uri(path) -> bool:
    """`s3://bucket/1.png`, `file:///data/1.png`: read by Ray's pyarrow filesystems."""
    return isinstance(path, str) and bool(_URI.match(path))


# ----------------------------------------------------------------------------- command line


def options(command):
    """digit-read's --ray options (applied in runtime/cli.py)."""
    for option in reversed(
        [
            click.option(
                "--ray",
                "ray_address",
                is_flag=False,
                flag_value=LOCAL,
                default=None,
                metavar="[ADDRESS]",
                help="read on Ray Data: alone, a local Ray instance; with ADDRESS (auto, "
                "HOST:PORT, ray://HOST:PORT) join that cluster. Needs the [ray] extra",
            ),
            click.option(
                "--actors",
                type=click.IntRange(1),
                help="with --ray: model actors [one per 2 CPUs, or one per GPU with cuda]",
            ),
            click.option(
                "--cpus",
                type=click.FloatRange(0.5),
                help="with --ray alone: CPUs the local Ray instance may use [all]",
            ),
            click.option(
                "--out",
                "out_dir",
                type=click.Path(file_okay=False),
                help="with --ray: also write Parquet shards (image_id, path, number, boxes, "
                "scores, digits) into this directory",
            ),
        ]
    ):
        command = option(command)
    return command


def parse_options(paths: tuple[str, ...], given: dict) -> tuple[tuple[str, ...], dict | None]:
    """(paths, the --ray settings or None). `--ray imgs/` must not take imgs/ for an address:
    a value that is no address (auto, local, ray://..., HOST:PORT) is the first path."""
    address = given.get("ray_address")
    settings = {k: given.get(k) for k in ("actors", "cpus", "out_dir")}
    if address is None:
        for name, value in settings.items():
            if value is not None:
                flag = "--out" if name == "out_dir" else f"--{name}"
                raise click.UsageError(f"{flag} needs --ray")
        return paths, None
    if not _ADDRESS.match(address):
        paths, address = (address, *paths), LOCAL
    if settings["cpus"] is not None and address != LOCAL:
        raise click.UsageError("--cpus sizes a local Ray instance; a cluster has its own CPUs")
    return paths, {"address": address, **settings}


# ------------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class Plan:
    actors: int
    num_cpus: float  # per actor
    num_gpus: float  # per actor (0: CPU actors)

    @property
    def threads(self) -> int:
        return ort_threads(self.num_cpus)


def plan(node_cpus: list[float], gpus: float, actors: int | None, device: str) -> Plan:
    """How many model actors, and the CPUs (and GPUs) each asks Ray for.

    Default count: one actor per 2 CPUs of the cluster, or one per GPU with device cuda.
    The rule that keeps every job able to progress: on each node the actors placed there leave
    READ_CPUS free, so a read task always fits; i.e. the largest share c (in hundredths) with
    sum over nodes of floor((cpus - READ_CPUS) / c) >= actors. A cuda actor asks for at most
    one CPU. Raises UserError when the actors cannot fit at all.
    """
    cpus = [c for c in node_cpus if c > 0]
    total = sum(cpus)
    if device == "cuda":
        if not gpus:
            raise UserError("--device cuda: the Ray cluster has no GPU", code=2)
        n = actors or max(1, int(gpus))
        num_gpus = 1.0 if gpus >= n else math.floor(gpus / n * 100) / 100
    else:
        n = actors or max(1, int(total // 2))
        num_gpus = 0.0
    free = [f for c in cpus if (f := round((c - READ_CPUS) * 100)) > 0]  # hundredths of a CPU
    best = 0
    for f in free:
        for k in range(1, n + 1):
            share = f // k
            if share > best and sum(g // share for g in free) >= n:
                best = share
    if best < 5:  # 0.05 CPU: less is no actor at all
        raise UserError(
            f"--actors {n}: too many for {total:g} CPUs ({READ_CPUS} per node stay free for "
            "Ray Data's read tasks)",
            code=2,
        )
    num_cpus = best / 100
    if device == "cuda":
        num_cpus = min(num_cpus, 1.0)
    return Plan(n, num_cpus, num_gpus)


def ort_threads(cpus: float) -> int:
    """ONNX Runtime threads for a CPU share Ray granted: 0.5 -> 1, 0.87 -> 1, 1.75 -> 2."""
    return max(1, int(cpus + 0.5))


def block_count(n: int, batch_size: int, actors: int) -> int:
    """Ray Data blocks of the input list: a few batches each (a retry redoes one block), but
    at least two per actor while there are batches enough to share."""
    batches = math.ceil(n / batch_size)
    return max(1, min(batches, max(math.ceil(batches / 4), 2 * actors)))


# --------------------------------------------------------------------------- the Ray stages


def _open_uri(uri: str, mode: str):
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    return fs.open_input_stream(path)


def read_files(batch):
    """Read stage: (idx, path) -> (idx, path, data, error). Never raises for one bad file."""
    import pyarrow as pa

    from digit_reader.runtime.preprocess import read_encoded

    data, errors = [], []
    for path in batch.column("path").to_pylist():
        try:
            data.append(read_encoded(path, _open_uri if is_uri(path) else open).data)
            errors.append(None)
        except ImageError as e:
            data.append(None)
            errors.append(e.reason)
    return batch.append_column("data", pa.array(data, pa.binary())).append_column(
        "error", pa.array(errors, pa.string())
    )


def result_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("idx", pa.int64()),
            ("number", pa.string()),
            ("boxes", pa.list_(pa.list_(pa.float32(), 4))),
            ("scores", pa.list_(pa.float32())),
            ("digits", pa.list_(pa.int8())),
            ("error", pa.string()),  # the ImageError's reason; the driver names the path
        ]
    )


class ReaderActor:
    """Model stage: one runtime Reader per actor, threads matched to the CPUs Ray granted."""

    def __init__(self, model: str, device: str, batch_size: int, threshold: float | None):
        import ray

        from digit_reader.runtime.reader import Reader

        granted = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        threads = ort_threads(granted)
        self.reader = Reader(
            model,
            device=device,
            batch_size=batch_size,
            threshold=threshold,
            workers=threads,
            threads=threads,
        )

    def __call__(self, batch):
        import pyarrow as pa

        from digit_reader.runtime.preprocess import EncodedImage

        rows = batch.to_pylist()
        good = [r for r in rows if r["error"] is None]
        images = (EncodedImage(r["path"], r["data"]) for r in good)
        preds = {r["idx"]: p for r, (_, p) in zip(good, self.reader.iter_read(images), strict=True)}
        out = {name: [] for name in result_schema().names}
        for r in rows:
            pred = preds.get(r["idx"])
            out["idx"].append(r["idx"])
            if pred is None or isinstance(pred, ImageError):
                out["error"].append(r["error"] if pred is None else pred.reason)
                for name in ("number", "boxes", "scores", "digits"):
                    out[name].append(None)
            else:
                out["error"].append(None)
                out["number"].append(pred.number)
                out["boxes"].append(pred.boxes.tolist())
                out["scores"].append(pred.scores.tolist())
                out["digits"].append(pred.digits.tolist())
        return pa.table(out, schema=result_schema())


# ------------------------------------------------------------------------------- the driver


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


def guard_stdout():
    """The CSV's stream: a private duplicate of fd 1, with fd 1 and sys.stdout sent to stderr,
    so nothing Ray prints can land in the CSV. Under a test runner's captured stdout (no fd),
    sys.stdout itself."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.stdout
    sys.stdout.flush()
    csv_fd = os.dup(fd)  # not inheritable: Ray's processes never hold the CSV pipe
    os.dup2(sys.stderr.fileno(), fd)
    sys.stdout = sys.stderr
    return os.fdopen(csv_fd, "w", newline="", encoding="utf-8")


class _DropNoise(logging.Filter):
    def filter(self, record):
        return not record.getMessage().startswith("Progress bars disabled")


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _runtime_package(where: str) -> str:
    """A copy of this package as `digit_reader.runtime` under `where`, for a cluster's
    runtime_env: the nodes need numpy, pillow and onnxruntime (or TensorRT), not digit-reader."""
    import digit_reader.runtime as runtime

    stage = Path(where) / "digit_reader"
    shutil.copytree(
        Path(runtime.__file__).parent,
        stage / "runtime",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    (stage / "__init__.py").write_text("")
    return str(stage)


def start_ray(address: str, cpus: float | None) -> tuple[str | None, float]:
    """ray.init a local instance (address "local") or join a cluster; (our temporary
    directory, for stop_ray; seconds it took)."""
    try:
        import ray
    except ImportError:
        raise UserError(
            "--ray needs Ray Data: pip install 'digit-reader[ray]' (ray[data], pyarrow)", code=2
        ) from None
    common = {
        "include_dashboard": False,
        "log_to_driver": False,  # actors' output stays in the session's log files
        "logging_level": logging.WARNING,
    }
    temp = tempfile.mkdtemp(prefix="digit-ray-")  # short: a local instance's AF_UNIX sockets
    start = time.perf_counter()
    try:
        if address == LOCAL:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(address=LOCAL, num_cpus=cpus or os.cpu_count(), _temp_dir=temp, **common)
        else:
            env = {"py_modules": [_runtime_package(temp)]}
            ray.init(address=address, runtime_env=env, **common)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        shutil.rmtree(temp, ignore_errors=True)
        lines = str(e).strip().splitlines()
        hint = (
            "; to join HOST:PORT or ray://, set RAY_AUTH_MODE=token (and the cluster's token); "
            "ray:// also needs ray[client] here and on the head"
            if address not in (LOCAL, "auto")
            else ""
        )
        raise UserError(
            f"cannot {'start' if address == LOCAL else 'join'} Ray at {address}: "
            f"{lines[-1] if lines else type(e).__name__}{hint}",
            code=2,
        ) from None
    # Ray Data logs each execution's start and plan at INFO, and warns that its progress bars
    # are off (digit-read prints its own progress): keep stderr to what matters
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    import ray.data  # noqa: F401  (configures the ray.data logger)

    for handler in logging.getLogger("ray.data").handlers:
        handler.addFilter(_DropNoise())
    return temp, time.perf_counter() - start


def stop_ray(temp: str) -> None:
    """Disconnect (a local instance stops) and remove start_ray's temporary directory."""
    import ray

    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def node_resources() -> tuple[list[float], float]:
    """(CPUs of each alive node, GPUs in all)."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return [n["Resources"].get("CPU", 0.0) for n in nodes], sum(
        n["Resources"].get("GPU", 0.0) for n in nodes
    )


def build_dataset(items: list[dict], p: Plan, batch_size: int, actor_kwargs: dict):
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # our own progress line instead
    ctx.execution_options.preserve_order = False  # InOrder restores input order
    ctx.execution_no_progress_timeout_s = STALL_TIMEOUT_S
    ds = ray.data.from_items(
        items, override_num_blocks=block_count(len(items), batch_size, p.actors)
    )
    ds = ds.map_batches(
        read_files, batch_size=batch_size, batch_format="pyarrow", num_cpus=READ_CPUS
    )
    return ds.map_batches(
        ReaderActor,
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=p.actors),
        num_cpus=p.num_cpus,
        **({"num_gpus": p.num_gpus} if p.num_gpus else {}),
        fn_constructor_kwargs=actor_kwargs,
    )


def result_tables(items, p: Plan, batch_size: int, actor_kwargs: dict, client: bool):
    """The actors' output tables as they come. Over Ray Client (ray://) Ray Data cannot run on
    the client in Ray 2.60, so one task on the cluster runs it and returns every table."""
    if not client:
        ds = build_dataset(items, p, batch_size, actor_kwargs)
        yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")
        return
    import ray

    @ray.remote(num_cpus=0)
    def run(items, p, batch_size, actor_kwargs):
        ds = build_dataset(items, p, batch_size, actor_kwargs)
        return list(ds.iter_batches(batch_size=None, batch_format="pyarrow"))

    yield from ray.get(run.remote(items, p, batch_size, actor_kwargs))


class ParquetShards:
    """--out DIR: part-00000.parquet, ... of SHARD_ROWS rows in input order, each written
    atomically; shards of an earlier, longer run are removed at the end."""

    def __init__(self, out_dir: str | os.PathLike, rows: int = SHARD_ROWS):
        self.dir, self.rows, self.buffer, self.count = Path(out_dir), rows, [], 0
        self.dir.mkdir(parents=True, exist_ok=True)

    def add(self, image_id, path, result: Result) -> None:
        self.buffer.append(
            {
                "image_id": str(image_id),
                "path": str(path),
                "number": result.number,
                "boxes": result.boxes,
                "scores": result.scores,
                "digits": result.digits,
            }
        )
        if len(self.buffer) >= self.rows:
            self._write()

    def _write(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from digit_reader.runtime.atomic import atomic_path

        schema = pa.schema(
            [
                ("image_id", pa.string()),
                ("path", pa.string()),
                ("number", pa.string()),
                ("boxes", pa.list_(pa.list_(pa.float32(), 4))),
                ("scores", pa.list_(pa.float32())),
                ("digits", pa.list_(pa.int8())),
            ]
        )
        with atomic_path(self.dir / f"part-{self.count:05d}.parquet") as tmp:
            pq.write_table(pa.Table.from_pylist(self.buffer, schema), tmp)
        self.buffer, self.count = [], self.count + 1

    def close(self) -> None:
        if self.buffer:
            self._write()
        for old in self.dir.glob("part-*.parquet"):
            stem = old.stem.removeprefix("part-")
            if stem.isdigit() and int(stem) >= self.count:
                old.unlink()


def read(
    files: list,
    n_failed: int,
    model,
    device: str,
    batch_size: int,
    threshold: float | None,
    json_path: str | None,
    address: str,
    actors: int | None,
    cpus: float | None,
    out_dir: str | None,
    drawer=None,
) -> int:
    """digit-read --ray: the whole run; returns the exit code (0 all read, 1 some failed).
    `drawer` (runtime.draw.Drawer, --draw/--sheet) draws on the driver from the results."""
    from digit_reader.runtime.modelcard import card_for
    from digit_reader.runtime.output import ResultWriter
    from digit_reader.runtime.reader import resolve_model
    from digit_reader.runtime.submission import image_id_for

    # fail on the driver (exit 2) before starting Ray: an actor whose __init__ raises is not
    # restarted, it fails the whole job
    card, _ = card_for(resolve_model(model, device, log=lambda message: None))
    given = Path(model or os.environ["DIGIT_MODEL"]).resolve()
    csv_out = guard_stdout()
    temp, init_s = start_ray(address, cpus)
    import ray

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so that Ray is shut down below
    try:
        node_cpus, gpus = node_resources()
        if device == "auto":
            device = "cuda" if gpus else "cpu"
        p = plan(node_cpus, gpus, actors, device)
        _err(
            f"digit-read --ray: {len(files)} images, Ray {ray.__version__} at {address} "
            f"({sum(node_cpus):g} CPU, {gpus:g} GPU, {len(node_cpus)} nodes; ready in "
            f"{init_s:.1f} s), {p.actors} actors x {p.num_cpus:g} CPU"
            + (f" x {p.num_gpus:g} GPU" if p.num_gpus else f" (ONNX Runtime threads {p.threads})")
            + f", canvas {card.canvas[0]}x{card.canvas[1]}, batch {batch_size}"
        )
        items = [
            {"idx": i, "path": f if is_uri(f) else str(Path(f).resolve())}
            for i, f in enumerate(files)
        ]
        actor_kwargs = {
            "model": str(given),
            "device": device,
            "batch_size": batch_size,
            "threshold": threshold,
        }
        kept_at = card.threshold if threshold is None else threshold
        writer = ResultWriter(csv_out, json_path, failed=n_failed, drawer=drawer, threshold=kept_at)
        shards = ParquetShards(out_dir) if out_dir else None
        order = InOrder(len(files))

        def emit(idx: int, r: dict | None) -> None:
            path = files[idx]
            if r is None or r["error"] is not None:
                writer.add(
                    path, ImageError(path, "no result from Ray" if r is None else r["error"])
                )
                return
            result = Result(r["number"], r["boxes"], r["scores"], r["digits"])
            writer.add(path, result)
            if shards:
                shards.add(image_id_for(path), path, result)

        start, last = time.perf_counter(), -math.inf
        try:
            tables = result_tables(
                items, p, batch_size, actor_kwargs, client=address.startswith("ray://")
            )
            for table in tables:
                for row in table.to_pylist():
                    for idx, r in order.push(row["idx"], row):
                        emit(idx, r)
                now = time.perf_counter()
                if now - last >= PROGRESS_EVERY_S:
                    _progress(order.next, len(files), now - start)
                    last = now
        except Exception as e:  # the job failed as a whole, not one image: say so, go on
            lines = str(e).strip().splitlines()
            writer.on_error(f"error: the Ray job failed: {lines[-1] if lines else repr(e)}")
        for idx, r in order.rest():
            emit(idx, r)
        _progress(len(files), len(files), time.perf_counter() - start)
        if shards:
            shards.close()
        return writer.finish(time.perf_counter() - start)
    finally:
        stop_ray(temp)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def _progress(done: int, total: int, seconds: float) -> None:
    _err(f"digit-read --ray: {done}/{total} images, {done / max(seconds, 1e-9):.1f} images/s")
