"""model.onnx from an earlier export of the same checkpoint, when nothing that shapes the graph
has changed: re-exporting a run (adding --int8 or --openvino, another gate, another output
directory) skips torch.onnx.export, which takes most of a small model's export.

An entry's key is a sha256 over everything the graph is a function of: the checkpoint's sha256,
the opset, the Python version, the versions of torch, torchvision, onnx, onnxscript and onnx-ir
(torch's exporter builds and saves the graph with it), and the source of every digit_reader
module the export runs, read when the export starts (a code change is a new graph). Entries are
written atomically with the sha256 of their bytes; a copy whose bytes do not match is exported
again and replaced. The GRAPH_CACHE_ENTRIES most recently used entries are kept; files without a
record (an export killed while storing) go too. The parity gate still holds every file, cached
or not, to its rule.

Where: --graph-cache DIR, else $DIGIT_READER_CACHE, else $XDG_CACHE_HOME/digit-reader (or
~/.cache/digit-reader); "off" turns it off.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from digit_reader.export.defaults import GRAPH_CACHE_ENTRIES
from digit_reader.runtime import atomic
from digit_reader.runtime.modelcard import sha256_of

CACHE_ENV = "DIGIT_READER_CACHE"
OFF = "off"
GRAPH_PACKAGES = ("digit_reader.runtime", "digit_reader.train", "digit_reader.export")
GRAPH_DISTRIBUTIONS = ("torch", "torchvision", "onnx", "onnxscript", "onnx-ir")
STALE_TMP_S = 24 * 3600  # a store's temporary file older than this was left by a killed export


def cache_root(given: str | None = None) -> Path | None:
    """The cache directory from --graph-cache, the environment or the XDG default; None: off."""
    value = given or os.environ.get(CACHE_ENV)
    if value:
        return None if value == OFF else Path(value).expanduser()
    try:
        xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    except RuntimeError:  # no $HOME and a uid without a passwd entry (containers): no cache
        return None
    return Path(xdg) / "digit-reader"


def code_digest() -> str:
    """sha256 over the source of the modules an export runs, by relative path."""
    h = hashlib.sha256()
    for package in GRAPH_PACKAGES:
        for top in importlib.util.find_spec(package).submodule_search_locations:
            for path in sorted(Path(top).rglob("*.py")):
                h.update(f"{package}/{path.relative_to(top).as_posix()}\0".encode())
                h.update(path.read_bytes())
    return h.hexdigest()


def graph_key(checkpoint_sha256: str, opset: int, versions: dict, code: str) -> str:
    """The entry's name: a function of exactly what the exported graph depends on."""
    parts = {"checkpoint": checkpoint_sha256, "opset": opset, "versions": versions, "code": code}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def graph_versions() -> dict:
    found = {name: importlib.metadata.version(name) for name in GRAPH_DISTRIBUTIONS}
    return found | {"python": platform.python_version()}


def entry_path(root: Path, key: str) -> Path:
    return root / "graphs" / f"{key}.onnx"


def exported(root: Path | None, key: str, dst: Path, export: Callable[[Path], None]) -> bool:
    """Write the graph at `dst`: the cached entry `key` when it is intact (True), else
    `export(dst)`, then stored as that entry (False). Without a root, always exported."""
    if root is None:
        export(dst)
        return False
    entry = entry_path(root, key)
    record = entry.with_suffix(".json")
    if _copied(entry, record, dst):
        with contextlib.suppress(OSError):
            os.utime(record)  # most recently used
        return True
    export(dst)
    _store(dst, entry, record)
    return False


def _copied(entry: Path, record: Path, dst: Path) -> bool:
    """Copy the entry to `dst` and check the copy against its record: what is checked is what
    the export uses, even when another export replaces or prunes the entry meanwhile."""
    try:
        want = json.loads(record.read_text())["sha256"]
        shutil.copyfile(entry, dst)
        return sha256_of(dst) == want
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _store(src: Path, entry: Path, record: Path) -> None:
    """Copy `src` into the cache, then drop the least recently used entries over the limit.
    A cache that cannot be written (read-only, full) costs only the reuse."""
    try:
        with atomic.atomic_path(entry) as tmp:
            shutil.copyfile(src, tmp)
        atomic.write_json(record, {"sha256": sha256_of(entry)})
        _prune(entry.parent, GRAPH_CACHE_ENTRIES)
    except OSError:
        pass


def _prune(folder: Path, keep: int) -> None:
    """Keep the `keep` most recently used entries; drop graphs without a record and temporary
    files a killed export left."""
    records = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for record in records[keep:]:
        record.unlink(missing_ok=True)
        record.with_suffix(".onnx").unlink(missing_ok=True)
    for graph in folder.glob("*.onnx"):
        if not graph.with_suffix(".json").exists():
            graph.unlink(missing_ok=True)
    now = time.time()
    for tmp in folder.glob(".*.tmp"):
        if now - tmp.stat().st_mtime > STALE_TMP_S:
            tmp.unlink(missing_ok=True)
