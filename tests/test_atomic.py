"""Atomic writes land whole, or not at all, with the mode open() would have given the file."""

import os

import pytest

from digit_reader.runtime import atomic


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_new_file_gets_the_mode_open_would_give_it(tmp_path):
    atomic.write_text(tmp_path / "model.json", "{}\n")
    with open(tmp_path / "plain.json", "w") as f:
        f.write("{}\n")
    mode = (tmp_path / "model.json").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain.json").stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert mode & 0o044 or _umask() & 0o044  # readable by others unless the umask says no


def test_a_replaced_file_keeps_its_mode(tmp_path):
    path = tmp_path / "pred.json"
    path.write_text("old")
    path.chmod(0o640)
    atomic.write_text(path, "new")
    assert path.read_text() == "new" and path.stat().st_mode & 0o777 == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "model.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic.atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old" and sorted(tmp_path.iterdir()) == [path]
