"""The two Ray Data stages of `digit-read --ray`: reading files (tasks) and reading numbers
(an actor pool, each actor holding the runtime's Reader).

A read task turns rows (idx, path) into (idx, path, data, error): the bytes of each file, or
the reason it could not be read; a bad file is a row with an error, never a failed job. A model
actor puts the bytes through the same preprocessing contract (open_rgb of an EncodedImage: the
file's pixels and the file's error messages), batching, inference and decoding rule
(Reader.iter_read) as plain digit-read. `result_tables` runs both and yields the actors' tables.
"""

from __future__ import annotations

from digit_reader.runtime.errors import ImageError
from digit_reader.runtime.inputs import is_uri
from digit_reader.runtime.ray_plan import READ_CPUS, Plan, block_count, engine_threads
from digit_reader.runtime.ray_results import PREDICTION_COLUMNS, result_schema

STALL_TIMEOUT_S = 600  # Ray Data fails a job that makes no progress this long


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


class ReaderActor:
    """Model stage: one runtime Reader per actor, engine threads matched to the CPUs Ray
    granted it. `reader_options` are the Reader's (model, device, batch_size, threshold,
    engine, precision)."""

    def __init__(self, **reader_options):
        import ray

        from digit_reader.runtime.reader import Reader

        granted = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        threads = engine_threads(granted)
        self.reader = Reader(**reader_options, workers=threads, threads=threads)

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
            failed = pred is None or isinstance(pred, ImageError)
            out["error"].append((r["error"] if pred is None else pred.reason) if failed else None)
            for name in PREDICTION_COLUMNS:
                value = None if failed else getattr(pred, name)
                out[name].append(value.tolist() if hasattr(value, "tolist") else value)
        return pa.table(out, schema=result_schema())


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
