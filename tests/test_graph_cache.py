"""digit-export's graph cache: model.onnx is reused only for the same checkpoint, opset,
versions and code, only while its bytes are intact, and never where it is turned off."""

import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from digit_reader.export import graph_cache
from digit_reader.export.cli import main as export_main
from digit_reader.export.graph_cache import cache_root, exported, graph_key


def _writer(calls: list, data: bytes = b"graph"):
    def export(dst):
        calls.append(dst)
        dst.write_bytes(data)

    return export


def test_the_key_follows_everything_the_graph_depends_on():
    base = ("a" * 64, 18, {"torch": "2.14.1", "onnx": "1.19"}, "c" * 64)
    key = graph_key(*base)
    assert graph_key(*base) == key
    assert graph_key("b" * 64, *base[1:]) != key
    assert graph_key(base[0], 17, *base[2:]) != key
    assert graph_key(*base[:2], {"torch": "2.11.0", "onnx": "1.19"}, base[3]) != key
    assert graph_key(*base[:3], "d" * 64) != key


def test_the_key_holds_every_library_that_writes_the_graph():
    found = graph_cache.graph_versions()
    assert {"torch", "torchvision", "onnx", "onnxscript", "onnx-ir", "python"} <= set(found)
    assert all(isinstance(v, str) and v for v in found.values())


def test_the_code_digest_changes_with_any_module_of_the_package(tmp_path, monkeypatch):
    pkg = tmp_path / "fakepkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "graph.py").write_text("K = 100\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(graph_cache, "GRAPH_PACKAGES", ("fakepkg",))
    before = graph_cache.code_digest()
    assert graph_cache.code_digest() == before
    (pkg / "sub" / "graph.py").write_text("K = 101\n")
    assert graph_cache.code_digest() != before


def test_a_hit_copies_the_entry_a_damaged_one_is_exported_again(tmp_path):
    calls: list = []
    assert not exported(tmp_path, "k", tmp_path / "one.onnx", _writer(calls))
    assert exported(tmp_path, "k", tmp_path / "two.onnx", _writer(calls, b"other"))
    assert len(calls) == 1 and (tmp_path / "two.onnx").read_bytes() == b"graph"
    (tmp_path / "graphs" / "k.onnx").write_bytes(b"grap")  # truncated behind the cache's back
    assert not exported(tmp_path, "k", tmp_path / "three.onnx", _writer(calls, b"fresh"))
    assert len(calls) == 2 and (tmp_path / "three.onnx").read_bytes() == b"fresh"
    assert exported(tmp_path, "k", tmp_path / "four.onnx", _writer(calls))  # replaced, intact
    assert (tmp_path / "four.onnx").read_bytes() == b"fresh"


def test_an_entry_gone_behind_its_record_is_exported_again(tmp_path):
    calls: list = []
    exported(tmp_path, "k", tmp_path / "one.onnx", _writer(calls))
    (tmp_path / "graphs" / "k.onnx").unlink()  # pruned by another export meanwhile
    assert not exported(tmp_path, "k", tmp_path / "two.onnx", _writer(calls))
    assert len(calls) == 2


def test_only_the_newest_entries_are_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(graph_cache, "GRAPH_CACHE_ENTRIES", 2)
    for i, key in enumerate("abc"):
        exported(tmp_path, key, tmp_path / f"{key}.onnx", _writer([]))
        os.utime(tmp_path / "graphs" / f"{key}.json", (i, i))
    exported(tmp_path, "d", tmp_path / "d.onnx", _writer([]))
    assert sorted(p.name for p in (tmp_path / "graphs").iterdir()) == [
        "c.json", "c.onnx", "d.json", "d.onnx"
    ]  # fmt: skip


def test_graphs_without_a_record_and_stale_temporary_files_are_dropped(tmp_path):
    graphs = tmp_path / "graphs"
    graphs.mkdir()
    (graphs / "orphan.onnx").write_bytes(b"killed before its record")
    old, fresh = graphs / ".a.onnx.x.tmp", graphs / ".b.onnx.y.tmp"
    old.write_bytes(b"")
    fresh.write_bytes(b"")  # another export may be writing it now
    os.utime(old, (time.time() - 2 * graph_cache.STALE_TMP_S,) * 2)
    exported(tmp_path, "k", tmp_path / "k.onnx", _writer([]))
    assert sorted(p.name for p in graphs.iterdir()) == [fresh.name, "k.json", "k.onnx"]


def test_without_a_home_directory_the_cache_is_off(monkeypatch):
    for name in (graph_cache.CACHE_ENV, "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert cache_root() is None


def test_off_and_an_unwritable_cache_only_cost_the_reuse(tmp_path, monkeypatch):
    monkeypatch.setenv(graph_cache.CACHE_ENV, "off")
    assert cache_root() is None and cache_root(str(tmp_path)) == tmp_path
    monkeypatch.delenv(graph_cache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "digit-reader"
    calls: list = []
    assert not exported(None, "k", tmp_path / "a.onnx", _writer(calls))
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    assert not exported(blocked, "k", tmp_path / "b.onnx", _writer(calls))
    assert len(calls) == 2 and (tmp_path / "b.onnx").read_bytes() == b"graph"


@pytest.mark.slow
def test_a_second_export_of_the_run_reuses_model_onnx_byte_for_byte(
    export_dir, nano_run, graph_cache_dir, tmp_path
):
    out = tmp_path / "export"
    result = CliRunner().invoke(
        export_main, [str(nano_run), "-o", str(out), "--parity-images", "4"]
    )
    assert result.exit_code == 0, result.output
    assert "model.onnx from the graph cache" in result.stderr
    assert "ONNX from the graph cache" in result.stdout
    assert (out / "model.onnx").read_bytes() == (export_dir / "model.onnx").read_bytes()
    records = list((graph_cache_dir / "graphs").glob("*.json"))
    assert all(len(json.loads(r.read_text())["sha256"]) == 64 for r in records)
