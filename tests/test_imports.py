"""Dependency direction runtime <- train <- export, and a runtime that works with torch absent."""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "runtime": {"torch", "torchvision", "train", "export", "benchmarks"},
    "train": {"export", "benchmarks"},
    "export": {"benchmarks"},
}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every import in the file, including ones inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_import_walker_sees_nested_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os.path\ndef g():\n    from torch.nn import Linear\n    import export.x\n")
    assert imported_modules(f) == {"os", "torch", "export"}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no python files under {package}/"
    bad = {
        f"{f.relative_to(ROOT)} imports {m}"
        for f in files
        for m in imported_modules(f) & FORBIDDEN[package]
    }
    assert not bad, sorted(bad)


def test_runtime_imports_and_reads_an_image_without_torch(tmp_path):
    image = tmp_path / "7.png"
    Image.fromarray(np.full((12, 20, 3), (200, 10, 30), np.uint8)).save(image)
    code = f"""
import importlib, pkgutil, sys
for name in ("torch", "torchvision", "train", "export"):
    sys.modules[name] = None  # any `import torch` now raises ImportError
import runtime
mods = [m.name for m in pkgutil.iter_modules(runtime.__path__, "runtime.")]
for m in mods:
    importlib.import_module(m)
from runtime.preprocess import load_canvas
chw, scale, wh = load_canvas({str(image)!r}, (24, 24))
print(len(mods), chw.shape, chw[:, 0, 0].tolist(), scale, wh)
loaded = [m for m, mod in sys.modules.items() if mod and m.split(".")[0] in ("torch", "train")]
assert not loaded, loaded
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    n_modules, rest = result.stdout.split(" ", 1)
    assert int(n_modules) >= 5  # preprocess, decode, submission, reader, cli, ...
    assert rest.strip() == "(3, 24, 24) [200, 10, 30] 1.2 (20, 12)"
