"""Load on a Triton server: N client threads share a fixed number of requests; every image must
be answered exactly once, with what the local reader reads; throughput and p50/p99 latency.

    digit-bench triton-load --export DIR --clients 1,4,8 --batch 1,8
    digit-bench triton-load --export DIR --url triton://HOST:8000/digit_reader

Without --url the export is served on 127.0.0.1 by the Triton server of nvidia-pytriton
(benchmarks/triton_local.py: our config, its Python backend running the same model.onnx with
ONNX Runtime on the CPU), started and stopped here: the figures are then this machine's CPU
plus Triton's HTTP/gRPC, queueing and dynamic batching, not a GPU deployment's.

Each --batch size is a set of runs, one per --clients count. Request i is one batch: images
i*batch ... i*batch+batch-1 of the image set (cyclic), letterboxed beforehand (file decoding is
not in the figures), sent through the reader's Triton backend (runtime/triton_backend.py, one
client per thread) and decoded with the reader's decode_outputs; its latency is from sending to
decoded numbers. Checked, for every run: each
(request, slot) answered exactly once, none missing or twice; each answer's number and boxes
equal to the local ONNX Runtime reader's on that image (so no answer went to another request);
and the server's own inference count grew by exactly requests x batch (nothing retried or
dropped on its side). Exit 1 when any check fails.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from digit_reader.benchmarks import inputs
from digit_reader.benchmarks.machine import describe_machine, machine
from digit_reader.benchmarks.report import markdown_table, write
from digit_reader.runtime.command import Command, positive_ints
from digit_reader.runtime.console import err
from digit_reader.runtime.errors import BackendError, UserError
from digit_reader.runtime.modelcard import CARD_NAME, ModelCard
from digit_reader.runtime.reader import Reader, decode_outputs
from digit_reader.runtime.triton_backend import TritonBackend
from digit_reader.runtime.triton_config import check_config
from digit_reader.runtime.triton_url import parse_url

WARMUP_REQUESTS = 4


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def server_inferences(backend: TritonBackend) -> tuple[int, int] | None:
    """(inference_count, execution_count) of the served model from the server's statistics,
    or None where that endpoint is closed to us. The server counts a request just after it has
    answered it, so this waits until two readings 0.1 s apart agree (at most 5 s)."""
    t = backend.target
    client = backend._client()

    def read() -> tuple[int, int]:
        if t.protocol == "grpc":
            stats = client.get_inference_statistics(t.model, t.version, as_json=True)
        else:
            stats = client.get_inference_statistics(t.model, t.version)
        model = stats["model_stats"][0]
        return int(model.get("inference_count", 0)), int(model.get("execution_count", 0))

    try:
        last, deadline = read(), time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = read()
            if now == last:
                return now
            last = now
        return last
    except Exception:  # a restricted or missing statistics endpoint: the check is skipped
        return None


@dataclass
class _Tally:
    """What the client threads of one run share, under `lock`: the next request number, how
    often each (request, slot) was answered, the latencies, and what went wrong."""

    counter: Iterator[int] = field(default_factory=itertools.count)
    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def load_run(backend, prepared, reference, clients: int, requests: int, batch: int) -> dict:
    """`requests` batches from `clients` threads; latencies and the exactly-once checks."""
    tally = _Tally()
    work = (backend, prepared, reference, tally, requests, batch)
    before = server_inferences(backend)
    threads = [
        threading.Thread(target=_client, args=work, name=f"client-{c}") for c in range(clients)
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = server_inferences(backend)
    return _row(tally, clients, requests, batch, wall, (before, after))


def _client(backend, prepared, reference, tally: _Tally, requests: int, batch: int) -> None:
    """One client thread: take the next request number until `requests` are taken, send its
    batch (images i*batch.. of the set, cyclic) and record the latency and its answers."""
    n = len(prepared)
    while True:
        with tally.lock:
            i = next(tally.counter)
        if i >= requests:
            return
        images = [(i * batch + j) % n for j in range(batch)]
        t0 = time.perf_counter()
        try:
            out = backend(np.stack([prepared[k].canvas for k in images]))
            preds = decode_outputs(out, [prepared[k] for k in images], backend.card.threshold)
        except BackendError as e:
            with tally.lock:
                tally.failed.append(f"request {i}: {e}")
            continue
        seconds = time.perf_counter() - t0
        with tally.lock:
            tally.latencies.append(seconds)
            _check_answers(tally, i, images, preds, reference)


def _check_answers(tally: _Tally, i: int, images: list[int], preds, reference) -> None:
    """Count request i's answer in each slot and note any that differs from the local
    reader's on that image (number, or boxes beyond 1e-3 px): a sign of a crossed answer."""
    for slot, (k, pred) in enumerate(zip(images, preds, strict=True)):
        tally.answers[(i, slot)] += 1
        ref = reference[k]
        same = pred.number == ref.number and pred.boxes.shape == ref.boxes.shape
        if not (same and np.allclose(pred.boxes, ref.boxes, atol=1e-3)):
            tally.wrong.append(f"request {i} slot {slot}: {pred.number} for {ref.number}")


def _row(tally: _Tally, clients: int, requests: int, batch: int, wall: float, counts) -> dict:
    """The run's figures and checks: every (request, slot) answered exactly once, no answer
    wrong or failed, and the server's inference count (before, after) grown by requests x
    batch where its statistics could be read."""
    before, after = counts
    answers, wrong, failed = tally.answers, tally.wrong, tally.failed
    expected = {(i, s) for i in range(requests) for s in range(batch)}
    lost = sorted(expected - set(answers))
    twice = sorted(k for k, c in answers.items() if c > 1)
    row = {
        "clients": clients,
        "requests": requests,
        "batch": batch,
        "images": requests * batch,
        "answered": sum(answers.values()),
        "lost": len(lost),
        "duplicated": len(twice),
        "wrong": len(wrong),
        "failed": len(failed),
        "wall_s": round(wall, 3),
        "images_per_s": round(sum(answers.values()) / wall, 2),
        "p50_ms": round(1000 * _percentile(tally.latencies, 50), 2),
        "p99_ms": round(1000 * _percentile(tally.latencies, 99), 2),
        "server_inferences": None,
        "server_mean_batch": None,
        "examples": (failed + wrong + [f"lost {k}" for k in lost])[:5],
    }
    if before and after:
        inferences, executions = after[0] - before[0], after[1] - before[1]
        row["server_inferences"] = inferences
        row["server_mean_batch"] = round(inferences / executions, 2) if executions else None
    row["ok"] = not (lost or twice or wrong or failed) and row["server_inferences"] in (
        None,
        requests * batch,
    )
    return row


def run(
    export_dir: Path,
    url: str | None,
    protocols: list[str],
    clients: list[int],
    requests: int,
    batches: list[int],
    data: Path | None,
    n_images: int,
    server_threads: int,
) -> dict:
    from digit_reader.train import samples

    card = ModelCard.load(export_dir / CARD_NAME)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="triton-load-")))
        paths, origin = samples.sample_paths(data, n_images, cache_dir=tmp)
        if url is None:
            from digit_reader.benchmarks import triton_local

            server = stack.enter_context(triton_local.serve_export(export_dir, server_threads))
            urls = {p: server.url("digit_reader", p) for p in protocols}
            where = (
                f"local tritonserver 2.51 (nvidia-pytriton), Python backend running model.onnx "
                f"with ONNX Runtime, {server_threads} thread(s), one instance, on 127.0.0.1"
            )
            err(f"triton-load: {where}; ready in {server.startup_s} s")
        else:
            target = parse_url(url)
            urls = {target.protocol: url}
            where = f"{url}"
        rows, served = [], ""
        for protocol, model_url in urls.items():
            backend = TritonBackend(model_url)
            served = f"{backend.target.model} ({backend.file}, {backend.entry['precision']})"
            check_config(backend.config, expected=card, where=model_url)
            local = Reader(export_dir / backend.file, device="cpu", batch_size=8)
            prepared = inputs.prepared(card, paths)
            reference = local.infer(prepared)
            for batch in batches:
                for _ in range(WARMUP_REQUESTS):
                    backend(np.stack([p.canvas for p in prepared[:batch]]))
                for n in clients:
                    err(f"triton-load: {protocol}, {n} client(s), {requests} requests of {batch}")
                    row = load_run(backend, prepared, reference, n, requests, batch)
                    rows.append({"protocol": protocol, **row})
            backend.close()
    return {
        "benchmark": "triton_load",
        "server": where,
        "model": served,
        "canvas": list(card.canvas),
        "images": f"{len(paths)} ({origin.split(' (')[0]})",
        "rows": rows,
        "machine": machine(),
    }


def markdown(result: dict) -> str:
    m, (h, w) = result["machine"], result["canvas"]
    head = (
        f"Triton load: {result['model']} on {result['server']}; canvas {h}x{w}, "
        f"images {result['images']} ({describe_machine(m)}). "
        "Latency: send to decoded numbers, per request."
    )
    headers = [
        "protocol",
        "clients",
        "requests x batch",
        "images/s",
        "p50 ms",
        "p99 ms",
        "server mean batch",
        "answered once",
        "lost / twice / wrong / failed",
    ]
    rows = [
        [
            r["protocol"],
            r["clients"],
            f"{r['requests']} x {r['batch']}",
            r["images_per_s"],
            r["p50_ms"],
            r["p99_ms"],
            r["server_mean_batch"],
            f"{r['answered'] - r['duplicated']}/{r['images']}",
            f"{r['lost']} / {r['duplicated']} / {r['wrong']} / {r['failed']}",
        ]
        for r in result["rows"]
    ]
    return head + "\n\n" + markdown_table(headers, rows)


@click.command(cls=Command)
@click.option(
    "--export",
    "export_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="digit-export directory: what is served, and the local reference.",
)
@click.option("--url", help="triton://HOST:PORT/MODEL of a running server [default: serve here].")
@click.option(
    "--protocol",
    "protocols",
    default="http,grpc",
    show_default=True,
    help="Without --url: http, grpc or both.",
)
@click.option("--clients", default="1,4,8", show_default=True, callback=positive_ints)
@click.option("--requests", default=200, show_default=True, type=click.IntRange(1))
@click.option("--batch", "batches", default="1,8", show_default=True, callback=positive_ints)
@click.option("--images", "n_images", default=64, show_default=True, type=click.IntRange(1))
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="HW2-layout root for the images [default: synthetic].",
)
@click.option("--server-threads", default=1, show_default=True, type=click.IntRange(1))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where triton_load.json / .md go [default: the export directory].",
)
def main(
    export_dir, url, protocols, clients, requests, batches, n_images, data, server_threads, out
):
    """Concurrent clients against a Triton server: throughput, p50/p99, exactly-once answers."""
    wanted = [p.strip() for p in protocols.split(",") if p.strip()]
    if not wanted or set(wanted) - {"http", "grpc"}:
        raise UserError(f"--protocol: http, grpc or both, not {protocols!r}", code=2)
    result = run(
        export_dir, url, wanted, clients, requests, batches, data, n_images, server_threads
    )
    md = markdown(result)
    js, mdp = write(out or export_dir, "triton_load", result, md)
    print(md)
    bad = [r for r in result["rows"] if not r["ok"]]
    for r in bad:
        err(f"triton-load: {r['protocol']} x{r['clients']} failed its checks: {r['examples']}")
    err(f"triton-load: {js} and {mdp}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
