"""Images to run a model on when no data set is named: the run's own valid set when it can be
found, else synthetic SVHN-like ones (the export's parity gate and int8 calibration, latency,
the stand-in's calibration)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from digit_reader.runtime.preprocess import load_canvas
from digit_reader.train.data.hw2 import Sample, load_split

SYNTH_SEED = 20261125


def data_root_of(checkpoint_path: Path) -> Path | None:
    """The data root recorded in the run's config.json (beside the checkpoint), if it exists."""
    config = checkpoint_path.parent / "config.json"
    try:
        root = Path(json.loads(config.read_text(encoding="utf-8"))["data_root"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return root if root.is_dir() else None


def sample_set(root: Path | None, n: int, cache_dir: Path) -> tuple[list[Sample], str, bool]:
    """Up to n samples, where they come from, and whether they carry labels: ROOT's valid
    (else test, else train) split, else n synthetic SVHN-like images made in `cache_dir` (the
    caller's: it outlives the images' use and the caller removes it)."""
    if root is not None:
        for split in ("valid", "test", "train"):
            if (root / split).is_dir():
                found = load_split(root, split)[:n]
                if found:
                    return found, f"{root}/{split}", (root / f"{split}.json").is_file()
    from digit_reader.train.data.synth import synthesize

    out = Path(cache_dir) / "synthetic"
    if not (out / "valid.json").is_file():
        print(f"no data set given: synthesizing {n} SVHN-like images in {out}", file=sys.stderr)
        synthesize(out, {"valid": n}, seed=SYNTH_SEED, overwrite=True)
    return load_split(out, "valid")[:n], f"synthetic ({out})", True


def sample_paths(root: Path | None, n: int, cache_dir: Path) -> tuple[list[Path], str]:
    """Up to n image paths and where they come from (sample_set without the labels)."""
    found, origin, _ = sample_set(root, n, cache_dir)
    return [s.path for s in found], origin


def letterboxed(
    paths: list[Path], canvas: tuple[int, int], sharpen: bool = False
) -> tuple[np.ndarray, list[float], list[tuple[int, int]]]:
    """uint8 [N, 3, H, W] canvases (the preprocessing contract), with each image's scale and
    original (w, h) to bring boxes back to its pixels."""
    loaded = [load_canvas(p, canvas, sharpen) for p in paths]
    return np.stack([c for c, _, _ in loaded]), [s for _, s, _ in loaded], [wh for *_, wh in loaded]


def canvases(paths: list[Path], canvas: tuple[int, int], sharpen: bool = False) -> np.ndarray:
    """uint8 [N, 3, H, W]: the preprocessing contract applied to each image."""
    return letterboxed(paths, canvas, sharpen)[0]
