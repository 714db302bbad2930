"""digit-read's inputs: files as given, directories' images in natural order, URIs for --ray.

A path that does not exist is a failure to report (one line), never a reason to stop.
"""

from __future__ import annotations

import re
from pathlib import Path

from digit_reader.runtime.preprocess import is_image_path
from digit_reader.runtime.submission import natural_key

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_uri(path) -> bool:
    """`s3://bucket/1.png`, `file:///data/1.png`: read by Ray's pyarrow filesystems."""
    return isinstance(path, str) and bool(_URI.match(path))


def collect_inputs(paths: tuple[str, ...], uris: bool = False) -> tuple[list, list[str]]:
    """(files as given and directories' images in natural order, failures `PATH: reason`).
    URIs (`scheme://...`) are kept as strings when `uris` (--ray reads them), else failures."""
    files, missing = [], []
    for p in paths:
        if is_uri(p):
            if uris:
                files.append(p)
            else:
                missing.append(f"{p}: a URI; only --ray reads URIs")
            continue
        p = Path(p)
        if p.is_dir():
            files += sorted(
                (f for f in p.iterdir() if f.is_file() and is_image_path(f)), key=natural_key
            )
        elif p.exists():
            files.append(p)
        else:
            missing.append(f"{p}: no such file or directory")
    return files, missing
