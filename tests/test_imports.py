"""One installed name (`digit_reader`), the dependency direction runtime <- data <- train <-
export, and a runtime that works with torch absent."""

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PKG = "digit_reader"
DATA = f"{PKG}.train.data"
# unit -> its folder; train/data/ is a unit of its own, left out of train's
UNITS = {"runtime": "runtime", "data": "train/data", "train": "train", "export": "export"}
# unit -> names its modules must never import (anywhere, including inside functions)
FORBIDDEN = {
    "runtime": {"torch", "torchvision", "data", "train", "export", "benchmarks"},
    "data": {"torch", "torchvision", "train", "export", "benchmarks"},
    "train": {"export", "benchmarks"},
    "export": {"benchmarks"},
}


def _unit(module: str) -> str:
    """`torch.nn` -> torch; `digit_reader.train.data.x` -> data; `digit_reader.train.x` -> train."""
    if module == DATA or module.startswith(f"{DATA}."):
        return "data"
    parts = module.split(".")
    return parts[1] if parts[0] == PKG and len(parts) > 1 else parts[0]


def imported_modules(path: Path) -> set[str]:
    """Units of every import in the file, including ones inside functions: the top-level name,
    or for digit_reader's own modules the unit (`digit_reader.train.x` -> `train`,
    `digit_reader.train.data.x` -> `data`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
            if node.module in (PKG, f"{PKG}.train"):  # from digit_reader.train import data
                modules = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {_unit(m) for m in modules}
    return found


def unit_files(unit: str) -> list[Path]:
    files = (ROOT / UNITS[unit]).rglob("*.py")
    inner = [ROOT / f for u, f in UNITS.items() if u != unit and f.startswith(f"{UNITS[unit]}/")]
    return sorted(f for f in files if not any(f.is_relative_to(d) for d in inner))


def test_import_walker_sees_nested_and_own_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "import os.path\ndef g():\n    from torch.nn import Linear\n"
        "    import digit_reader.export.x\n    from digit_reader import benchmarks\n"
    )
    assert imported_modules(f) == {"os", "torch", "export", "benchmarks"}
    f.write_text(
        "import digit_reader.train.data.hw2\nfrom digit_reader.train.dataset import x\n"
        "def g():\n    from digit_reader.train import data, engine\n"
    )
    assert imported_modules(f) == {"data", "train"}
    f.write_text("from digit_reader.train.data import hw2\nfrom digit_reader import runtime\n")
    assert imported_modules(f) == {"data", "runtime"}


def test_units_split_train_from_its_data_package():
    assert ROOT / "train" / "data" / "hw2.py" in unit_files("data")
    assert ROOT / "train" / "data" / "hw2.py" not in unit_files("train")
    assert ROOT / "train" / "engine.py" in unit_files("train")


@pytest.mark.parametrize("unit", sorted(FORBIDDEN))
def test_import_direction(unit):
    files = unit_files(unit)
    assert files, f"no python files under {UNITS[unit]}/"
    bad = {
        f"{f.relative_to(ROOT)} imports {m}"
        for f in files
        for m in imported_modules(f) & FORBIDDEN[unit]
    }
    assert not bad, sorted(bad)


def test_no_module_imports_the_old_top_level_names():
    """Every import of our own code goes through digit_reader: `import runtime` would find an
    unrelated PyPI project, or a user's own runtime/ folder."""
    own = {"runtime", "train", "export", "benchmarks"}
    bad = [
        f"{f.relative_to(ROOT)} imports {m}"
        for folder in (*own, "tests")
        for f in sorted((ROOT / folder).rglob("*.py"))
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8")))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for m in (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        )
        if getattr(node, "level", 0) == 0 and m.split(".")[0] in own
    ]
    assert not bad, bad


@pytest.mark.slow
def test_wheel_installs_one_top_level_name(tmp_path):
    """The built wheel holds digit_reader/ (and its dist-info) and nothing else at the top."""
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info into the tree
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("digit_reader-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {PKG}
    for part in ("runtime", "train", "export", "benchmarks"):
        assert f"{PKG}/{part}/__init__.py" in names
    assert f"{PKG}/train/data/__init__.py" in names
    assert f"{PKG}/train/data/assets/svhn_layouts.json" in names
    assert f"{PKG}/export/assets/tensorrt_ops.txt" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "digit-read = digit_reader.runtime.cli:main" in scripts
    assert "digit-data = digit_reader.train.data.cli:main" in scripts


def test_runtime_imports_and_reads_an_image_without_torch(tmp_path):
    """Every runtime module imports with no extra: torch, ray and pyarrow unimportable."""
    image = tmp_path / "7.png"
    Image.fromarray(np.full((12, 20, 3), (200, 10, 30), np.uint8)).save(image)
    code = f"""
import importlib, pkgutil, sys
blocked = ("torch", "torchvision", "ray", "pyarrow", "tritonclient")
blocked += ("digit_reader.train", "digit_reader.export")
for name in blocked:
    sys.modules[name] = None  # any `import torch` now raises ImportError
import digit_reader.runtime as runtime
mods = [m.name for m in pkgutil.iter_modules(runtime.__path__, "digit_reader.runtime.")]
for m in mods:
    importlib.import_module(m)
from digit_reader.runtime.preprocess import load_canvas
chw, scale, wh = load_canvas({str(image)!r}, (24, 24))
print(len(mods), chw.shape, chw[:, 0, 0].tolist(), scale, wh)
loaded = [m for m, mod in sys.modules.items() if mod and m.split(".")[0] in blocked]
loaded += [m for m, mod in sys.modules.items() if mod and m.startswith("digit_reader.train")]
assert not loaded, loaded
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr
    n_modules, rest = result.stdout.split(" ", 1)
    assert int(n_modules) >= 6  # preprocess, decode, submission, reader, cli, ray_read, ...
    assert rest.strip() == "(3, 24, 24) [200, 10, 30] 1.2 (20, 12)"


def test_data_imports_and_makes_a_data_set_without_torch(tmp_path):
    """Every data module imports, and synth -> load -> stats runs, with torch and the rest of
    train, export and benchmarks unimportable."""
    code = f"""
import importlib, pkgutil, sys
for name in ("torch", "torchvision", "digit_reader.export", "digit_reader.benchmarks"):
    sys.modules[name] = None  # any `import torch` now raises ImportError
import digit_reader.train as train
for m in pkgutil.iter_modules(train.__path__, "digit_reader.train."):
    if m.name != "{DATA}":
        sys.modules[m.name] = None
import digit_reader.train.data as data
mods = [m.name for m in pkgutil.iter_modules(data.__path__, "{DATA}.")]
for m in mods:
    importlib.import_module(m)
from {DATA}.hw2 import load_split
from {DATA}.stats import dataset_stats
from {DATA}.synth import synthesize
synthesize("out", {{"valid": 3}}, seed=1)
stats = dataset_stats("out")
print(len(mods), len(load_split("out", "valid")), stats["splits"]["valid"]["images"])
loaded = [m for m, mod in sys.modules.items() if mod and m.split(".")[0] == "torch"]
loaded += [
    m for m, mod in sys.modules.items()
    if mod and m.startswith("digit_reader.train.") and not m.startswith("{DATA}")
]
assert not loaded, loaded
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr
    n_modules, rest = result.stdout.split(" ", 1)
    assert int(n_modules) >= 6  # hw2, synth, svhn_mat, layouts, stats, cli
    assert rest.strip() == "3 3"


@pytest.mark.parametrize(
    "module", ["runtime.cli", "train.cli", "train.data.cli", "export.cli", "benchmarks.cli"]
)
def test_cli_help_imports_no_torch(module):
    """`--help` (and click's option parsing) starts without torch: presets, backbones and every
    default come from torch-free modules; a group's subcommands import their code when run."""
    code = f"""
import sys
from click.testing import CliRunner
from digit_reader.{module} import main
for command in [None, *getattr(main, "commands", {{}})]:  # a group: every subcommand too
    result = CliRunner().invoke(main, [command, "--help"] if command else ["--help"])
    assert result.exit_code == 0, result.output
heavy = ("torch", "torchvision", "onnx", "ray", "pyarrow", "tritonclient")
heavy = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
print(heavy[:5])
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
