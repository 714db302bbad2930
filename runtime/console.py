"""The two streams of every digit-reader command: stdout carries data only (the CSV, a table),
stderr carries progress, notes and errors.

`err` is the one way to write a line to stderr. `data_stdout` keeps stdout for data whatever a
library prints: ONNX Runtime's Python layer, Ray's driver (raylet messages), OpenVINO and
TensorRT all write to sys.stdout or fd 1 at times.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO


def err(message: str) -> None:
    """One line (or a few) to stderr, flushed at once."""
    print(message, file=sys.stderr, flush=True)


def data_stdout() -> TextIO:
    """The data's stream: a private duplicate of fd 1, with fd 1 and sys.stdout sent to stderr,
    so nothing a library prints can land among the data. The duplicate is not inheritable:
    child processes (Ray's) never hold the data pipe. Under a test runner's captured stdout
    (no file descriptor), sys.stdout itself."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.stdout
    sys.stdout.flush()
    data_fd = os.dup(fd)
    os.dup2(sys.stderr.fileno(), fd)
    sys.stdout = sys.stderr
    return os.fdopen(data_fd, "w", newline="", encoding="utf-8")
