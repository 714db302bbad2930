"""`Reader`: letterbox images, run the exported graph, decode numbers. No torch anywhere.

Image decoding and letterboxing of the next batch run in worker threads (PIL and the
backends release the GIL) while the current batch is in the model.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from digit_reader.runtime.backends import open_backend, resolve_model
from digit_reader.runtime.console import err
from digit_reader.runtime.decode import Detections, Prediction, split_outputs
from digit_reader.runtime.errors import BackendError, ImageError
from digit_reader.runtime.modelcard import ModelCard, card_for
from digit_reader.runtime.preprocess import boxes_from_canvas, load_canvas
from digit_reader.runtime.triton_url import TritonTarget

DEFAULT_BATCH = 8
DEFAULT_WORKERS = 2  # threads decoding and letterboxing ahead of the model
_END = object()


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
        log: Callable[[str], None] = err,
        threads: int | None = None,
        engine: str = "auto",
        precision: str | None = None,
    ):
        """`engine` (auto, onnxruntime, openvino, tensorrt) and `precision` pick the file of
        an export directory and what runs it (runtime/backends.py)."""
        self.path = resolve_model(model, device, log, engine, precision)
        if isinstance(self.path, TritonTarget):  # the server's config carries the card
            if device != "auto":
                log(f"digit-read: --device {device} does not apply to {self.path} (served)")
            from digit_reader.runtime.triton_backend import TritonBackend

            self.backend = TritonBackend(self.path)
            self.card, entry = self.backend.card, self.backend.entry
            self.precision = entry.get("precision", "fp32")
        else:
            self.card, entry = card_for(self.path)
            self.backend = open_backend(
                self.path, entry, device, log, threads, engine, precision, batch_size
            )
            self.precision = getattr(self.backend, "precision", entry.get("precision", "fp32"))
        limit = self.backend.max_batch or batch_size
        self.batch_size = max(1, min(batch_size, limit))
        self.threshold = self.card.threshold if threshold is None else threshold
        self.workers = max(1, workers)

    def close(self) -> None:
        """Free the backend (sessions, GPU buffers, connections)."""
        self.backend.close()

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


__all__ = ["Reader", "ModelCard", "Prediction", "resolve_model", "open_backend"]
