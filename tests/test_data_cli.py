"""`digit-data` end to end: stats, convert svhn and synth through click, errors as one line."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from digit_reader.train.data import layouts
from digit_reader.train.data.cli import main


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_convert_then_stats_text_and_json(tmp_path, make_svhn):
    make_svhn(tmp_path / "svhn", n_train=20, n_test=5)
    result = _run("convert", "svhn", tmp_path / "svhn", "--out", tmp_path / "out", "--seed", "1")
    assert result.exit_code == 0, result.output
    assert "found train/, test/" in result.stderr and "not found: extra/" in result.stderr
    assert "[train] 18 images" in result.stdout and "[valid] 2 images" in result.stdout
    assert "[test] 5 images" in result.stdout
    real = layouts.load()
    heights = " / ".join(f"{v:g}" for v in real.height_percentiles.values())
    assert f"SVHN train {heights}" in result.stdout  # the SVHN-train reference beside it

    result = _run("stats", tmp_path / "out", "--json")
    assert result.exit_code == 0
    stats = json.loads(result.stdout)
    truth = make_svhn(tmp_path / "again", n_train=20, n_test=5)
    counts = {}
    for source, (digits, _, _) in truth.items():
        if source.startswith("test/"):
            counts[str(len(digits))] = counts.get(str(len(digits)), 0) + 1
    assert stats["splits"]["test"]["digit_counts"] == counts
    assert stats["splits"]["test"]["box_height"] == [12.0] * 5  # every fixture box is 12 px
    ref = stats["reference_svhn_train"]
    assert ref["digit_counts"] == {str(k): n for k, n in real.count_hist.items()}
    assert (ref["images"], ref["boxes"]) == (real.source["images"], real.source["boxes"])
    assert ref["box_aspect_wh"] == list(real.aspect_percentiles.values())


def test_stats_of_unlabelled_test_split_reads_sizes(tmp_path):
    from PIL import Image

    (tmp_path / "test").mkdir()
    for n in (1, 2):
        Image.new("RGB", (40 * n, 20)).save(tmp_path / "test" / f"{n}.png")
    stats = json.loads(_run("stats", tmp_path, "--json").stdout)["splits"]["test"]
    assert stats["images"] == 2 and stats["boxes"] == 0 and stats["digit_counts"] == {}
    assert stats["image_width"][0] == pytest.approx(40.4) and stats["image_height"][2] == 20


@pytest.mark.parametrize(
    "args, expect",
    [
        (["stats", "{tmp}/nowhere"], "error: {tmp}/nowhere: no such directory"),
        (["stats", "{tmp}"], "no split found"),
        (["convert", "svhn", "{tmp}", "--out", "{tmp}/o"], "found none of train/, test/, extra/"),
    ],
)
def test_user_errors_are_one_line_exit_1(tmp_path, args, expect):
    result = _run(*[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 1
    assert result.stderr.strip() == result.stderr.strip().splitlines()[0]
    assert expect.format(tmp=tmp_path) in result.stderr
    assert "Traceback" not in result.output


def test_bad_json_is_one_line(tmp_path):
    (tmp_path / "train.json").write_text("{")
    result = _run("stats", tmp_path)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {tmp_path / 'train.json'}: not valid JSON")


def test_usage_errors_exit_2(tmp_path):
    assert _run("stats").exit_code == 2
    assert _run("synth", "--out", tmp_path, "--train", "-1").exit_code == 2
    assert _run("convert", "mnist", tmp_path).exit_code == 2
    assert _run("synth", "--out", tmp_path).exit_code == 2  # nothing to make


def test_console_script_runs_as_a_process(tmp_path):
    bin_dir = __import__("pathlib").Path(sys.executable).parent
    result = subprocess.run(
        [bin_dir / "digit-data", "stats", tmp_path / "missing"], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr == f"error: {tmp_path / 'missing'}: no such directory\n"
    assert result.stdout == ""
    help_ = subprocess.run([bin_dir / "digit-data", "--help"], capture_output=True, text=True)
    assert help_.returncode == 0 and "synth" in help_.stdout and "convert" in help_.stdout


def test_synth_writes_layout_and_summary(tmp_path):
    out = tmp_path / "syn"
    result = _run("synth", "--out", out, "--train", 4, "--valid", 2, "--test", 2, "--seed", 5)
    assert result.exit_code == 0, result.output
    for split, n in (("train", 4), ("valid", 2), ("test", 2)):
        assert f"[{split}] {n} images" in result.stdout
        assert len(list((out / split).glob("*.png"))) == n
        assert (out / f"{split}.json").is_file()
    again = _run("synth", "--out", out, "--train", 1)
    assert again.exit_code == 1 and "already exists" in again.stderr
    first = (out / "train.json").read_bytes()
    redo = _run("synth", "--out", out, "--train", 4, "--seed", 5, "--overwrite", "--json")
    assert redo.exit_code == 0
    assert (out / "train.json").read_bytes() == first
    assert json.loads(redo.stdout)["splits"]["train"]["images"] == 4
