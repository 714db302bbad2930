"""`Reader`: letterbox images, run the exported graph, decode numbers. No torch anywhere.

Image decoding and letterboxing of the next batch run in worker threads (PIL and the
backends release the GIL) while the current batch is in the model.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from digit_reader.runtime.decode import Detections, Prediction, split_outputs
from digit_reader.runtime.errors import BackendError, ImageError, UserError
from digit_reader.runtime.modelcard import ModelCard, card_for
from digit_reader.runtime.preprocess import boxes_from_canvas, load_canvas
from digit_reader.runtime.triton_backend import (
    TritonBackend,
    TritonTarget,
    is_triton_url,
    parse_url,
)

DEFAULT_BATCH = 8
DEFAULT_WORKERS = 2  # threads decoding and letterboxing ahead of the model
_END = object()


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Prepared:
    canvas: np.ndarray  # 3xHxW uint8
    scale: float
    size: tuple[int, int]  # original (w, h)


def prepare(source, canvas: tuple[int, int], sharpen: bool = False) -> Prepared:
    """The preprocessing contract for one input: a path, a PIL image or a uint8 array."""
    return Prepared(*load_canvas(source, canvas, sharpen))


def decode_outputs(out: dict, prepared: list[Prepared], threshold: float) -> list[Prediction]:
    """The graph's padded outputs -> one Prediction per image, boxes in original pixels."""
    return [
        Prediction.decode(
            Detections(boxes_from_canvas(d.boxes, p.scale, p.size), d.scores, d.digits), threshold
        )
        for d, p in zip(split_outputs(out), prepared, strict=True)
    ]


def resolve_model(
    model: str | os.PathLike | None, device: str = "auto", log: Callable[[str], None] = _stderr
) -> Path | TritonTarget:
    """--model, else $DIGIT_MODEL. A directory means the export directory: its model.engine
    where that engine can run here (not with --device cpu), else its model.onnx, saying why
    on `log`. A file is used as named (an engine that cannot run fails when it is opened).
    triton://HOST:PORT/MODEL names a model on a Triton server (runtime/triton_backend.py)."""
    model = model or os.environ.get("DIGIT_MODEL")
    if not model:
        raise UserError(
            "no model given: pass --model FILE or set DIGIT_MODEL. Make one with "
            "`digit-train --preset nano --device cpu` then `digit-export RUN --out DIR`",
            code=2,
        )
    if is_triton_url(model):
        return parse_url(model)
    path = Path(model)
    if path.is_dir():
        onnx, engine = path / "model.onnx", path / "model.engine"
        if engine.is_file() and device != "cpu":
            reason = _engine_problem(engine)
            if reason is None:
                return engine
            if onnx.is_file():
                log(f"digit-read: not using {engine}: {reason}; reading with {onnx.name}")
        if onnx.is_file():
            return onnx
        raise UserError(f"{path}: no model.onnx or usable model.engine in this directory", code=2)
    if not path.is_file():
        raise UserError(f"{path}: no such model file", code=2)
    return path


def _engine_problem(engine: Path) -> str | None:
    """Why this engine cannot run here (TensorRT, cuda-python, GPU, built for another), or None."""
    from digit_reader.runtime.trt_backend import probe, why_engine_cannot_run

    try:
        _, entry = card_for(engine)
    except UserError as e:
        return str(e).removeprefix(f"{engine}: ")
    return why_engine_cannot_run(entry, probe())


def open_backend(
    path: Path,
    entry: dict,
    device: str,
    log: Callable[[str], None] = _stderr,
    threads: int | None = None,
):
    """The backend for `path`; `threads` caps ONNX Runtime's intra-op threads [all cores]."""
    if path.suffix in (".engine", ".plan"):
        if device == "cpu":
            raise UserError(
                f"{path}: a TensorRT engine runs on CUDA only, not --device cpu", code=2
            )
        from digit_reader.runtime.trt_backend import TensorRTBackend

        return TensorRTBackend(path, entry)
    if path.suffix == ".onnx":
        from digit_reader.runtime.ort_backend import OrtBackend

        return OrtBackend(path, device, threads=threads, log=log, precision=entry.get("precision"))
    raise UserError(f"{path}: unknown model type (want .onnx, .engine or .plan)", code=2)


class Reader:
    """Reads house numbers with an exported model; settings come from the model.json beside it.

    `workers` threads decode and letterbox ahead of the model; `threads` caps ONNX Runtime's
    intra-op threads (default: every core), e.g. to the CPU share a Ray actor was granted.
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        device: str = "auto",
        batch_size: int = DEFAULT_BATCH,
        threshold: float | None = None,
        workers: int = DEFAULT_WORKERS,
        log: Callable[[str], None] = _stderr,
        threads: int | None = None,
    ):
        self.path = resolve_model(model, device, log)
        if isinstance(self.path, TritonTarget):  # the server's config carries the card
            if device != "auto":
                log(f"digit-read: --device {device} does not apply to {self.path} (served)")
            self.backend = TritonBackend(self.path)
            self.card, entry = self.backend.card, self.backend.entry
        else:
            self.card, entry = card_for(self.path)
            self.backend = open_backend(self.path, entry, device, log, threads=threads)
        limit = self.backend.max_batch or batch_size
        self.batch_size = max(1, min(batch_size, limit))
        self.threshold = self.card.threshold if threshold is None else threshold
        self.workers = max(1, workers)
        self.precision = entry.get("precision", "fp32")

    @property
    def canvas(self) -> tuple[int, int]:
        return self.card.canvas

    def prepare(self, source) -> Prepared:
        return prepare(source, self.card.canvas, self.card.sharpen)

    def infer(self, prepared: list[Prepared]) -> list[Prediction]:
        """One forward pass over already prepared images (at most batch_size of them)."""
        batch = np.ascontiguousarray(np.stack([p.canvas for p in prepared]))
        return decode_outputs(self.backend(batch), prepared, self.threshold)

    def iter_read(self, sources: Iterable) -> Iterator[tuple[object, Prediction | ImageError]]:
        """(source, Prediction or ImageError) in input order; a bad image never stops the rest,
        nor does a batch the backend failed (BackendError: each of its images is an ImageError)."""
        pending: deque = deque()
        batch: list[tuple[object, Prepared | ImageError]] = []
        n_ready = 0
        with ThreadPoolExecutor(self.workers) as pool:
            it = iter(sources)
            for src in it:  # prime the prefetch window
                pending.append((src, pool.submit(self.prepare, src)))
                if len(pending) >= 2 * self.batch_size:
                    break
            while pending:
                src, future = pending.popleft()
                nxt = next(it, _END)
                if nxt is not _END:
                    pending.append((nxt, pool.submit(self.prepare, nxt)))
                try:
                    batch.append((src, future.result()))
                    n_ready += 1
                except ImageError as e:
                    batch.append((src, e))
                if n_ready == self.batch_size:
                    yield from self._flush(batch)
                    batch, n_ready = [], 0
            yield from self._flush(batch)

    def _flush(self, batch):
        ready = [p for _, p in batch if isinstance(p, Prepared)]
        try:
            preds = iter(self.infer(ready) if ready else [])
        except BackendError as e:  # this batch is lost (a server went away): name its images
            preds, failed = None, e
        for src, p in batch:
            if not isinstance(p, Prepared):
                yield src, p
            else:
                yield src, (next(preds) if preds is not None else ImageError(src, str(failed)))

    def read(self, images) -> list[Prediction]:
        """Predictions for a list of inputs (or one input); raises ImageError on a bad image."""
        single = isinstance(images, (str, os.PathLike, Image.Image, np.ndarray))
        results = []
        for _, result in self.iter_read([images] if single else images):
            if isinstance(result, ImageError):
                raise result
            results.append(result)
        return results[0] if single else results


__all__ = ["Reader", "ModelCard", "Prediction", "resolve_model"]
