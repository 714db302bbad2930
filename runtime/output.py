"""digit-read's output, one code path for the local reader and for `--ray`: the HW2 pred.csv on
stdout (header, one row per image in input order), the COCO results of `--json`, one `error:`
line per input that failed, and the closing summary line on stderr.

Callers hand results over in input order (collect_inputs' natural order); the local reader
yields them so, `--ray` restores that order from its row indices first.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from typing import TextIO

from digit_reader.runtime import atomic
from digit_reader.runtime.console import err
from digit_reader.runtime.decode import DEFAULT_THRESHOLD, Prediction
from digit_reader.runtime.errors import ImageError
from digit_reader.runtime.submission import CSV_HEADER, coco_results, image_id_for


class ResultWriter:
    """Writes rows as they come; `finish` writes the JSON, the summary, and gives the exit code."""

    def __init__(
        self,
        out: TextIO,
        json_path: str | None = None,
        failed: int = 0,
        on_error: Callable[[str], None] = err,
        drawer=None,
        threshold: float = DEFAULT_THRESHOLD,
    ):
        """`failed`: inputs that failed before reading (missing paths), already named.
        `drawer` (runtime.draw.Drawer) draws each image read, with its digits kept at
        `threshold`."""
        self.out, self.json_path, self.on_error = out, json_path, on_error
        self.drawer, self.threshold = drawer, threshold
        self.csv = csv.writer(out, lineterminator="\n")
        self.csv.writerow(CSV_HEADER)
        self.results: list[dict] = []
        self.n_ok, self.n_bad = 0, failed

    def failed(self, message: str) -> None:
        """An input that could not be read (`PATH: reason`): one error line, counted."""
        self.n_bad += 1
        self.on_error(f"error: {message}")

    def add(self, path, pred) -> None:
        """The next input's result, in input order: a prediction (anything with number, boxes,
        scores and digits) becomes its CSV row and COCO results, an ImageError its error line."""
        if isinstance(pred, ImageError):
            self.failed(str(pred))
            return
        self.n_ok += 1
        image_id = image_id_for(path)
        self.csv.writerow((image_id, pred.number))
        self.out.flush()  # a row read is a row kept, even if the engine then dies
        if self.json_path:
            self.results += coco_results(image_id, pred.boxes, pred.scores, pred.digits)
        if self.drawer:
            try:
                decoded = Prediction.from_detections(
                    pred.boxes, pred.scores, pred.digits, self.threshold
                )
                self.drawer.add(path, decoded)
            except (ImageError, OSError) as e:  # the file changed since it was read, disk full
                self.failed(f"{path}: no drawing ({e})")

    def finish(self, seconds: float) -> int:
        """Flush the CSV, write the COCO results atomically, print the summary; the exit code
        (0: every input read, 1: some failed)."""
        self.out.flush()
        if self.drawer:
            self.drawer.close()
        if self.json_path:
            atomic.write_text(self.json_path, json.dumps(self.results) + "\n")
        err(
            f"digit-read: {self.n_ok} read, {self.n_bad} failed in {seconds:.1f} s "
            f"({self.n_ok / max(seconds, 1e-9):.1f} images/s)"
            + (f"; COCO results in {self.json_path}" if self.json_path else "")
        )
        return 1 if self.n_bad else 0
