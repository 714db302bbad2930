"""digit-read with a real exported nano model: formats, torch-free run, bad input, batching."""

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from digit_reader.runtime.cli import main
from digit_reader.runtime.reader import Reader
from digit_reader.train import checkpoint, config, evaluate
from digit_reader.train.data.hw2 import load_split

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def test_images(synth_root):
    return sorted((synth_root / "test").glob("*.png"), key=lambda p: int(p.stem))


@pytest.fixture(scope="module")
def eager_numbers(nano_run, synth_root):
    """The training-side evaluation of the same model (PyTorch eager, original pixels)."""
    model, cfg = checkpoint.load_model(nano_run)
    samples = load_split(synth_root, "valid") + load_split(synth_root, "test")
    dets = evaluate.predict(model, samples, cfg.canvas, config.TrainConfig(), torch.device("cpu"))
    return {s.path: d for s, d in zip(samples, dets, strict=True)}


def _read(args, env=None):
    return CliRunner(env=env).invoke(main, [str(a) for a in args])


def test_csv_is_hw2_exact_and_json_is_coco_results(export_dir, synth_root, test_images, tmp_path):
    pred_json = tmp_path / "pred.json"
    result = _read([synth_root / "test", "--model", export_dir, "--json", pred_json])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "image_id,pred_label"
    rows = list(csv.reader(io.StringIO(result.stdout)))[1:]
    assert [int(r[0]) for r in rows] == [int(p.stem) for p in test_images]  # natural order
    assert all(r[1] == "-1" or r[1].isdigit() for r in rows)
    assert "12 read, 0 failed" in result.stderr

    from pycocotools.coco import COCO

    results = json.loads(pred_json.read_text())
    assert results and all(set(r) == {"image_id", "bbox", "score", "category_id"} for r in results)
    assert all(1 <= r["category_id"] <= 10 and r["bbox"][2] > 0 for r in results)
    gt = COCO(str(synth_root / "test.json"))
    det = gt.loadRes(str(pred_json))
    assert len(det.getAnnIds()) == len(results)


def test_reader_matches_the_eager_evaluation(export_dir, eager_numbers):
    reader = Reader(export_dir / "model.onnx", device="cpu")
    paths = list(eager_numbers)
    for path, pred in zip(paths, reader.read(paths), strict=True):
        ref = eager_numbers[path]
        assert pred.number == ref.number(), path
        assert len(pred.scores) == len(ref.scores)
        np.testing.assert_allclose(pred.scores, ref.scores, atol=1e-4)
        np.testing.assert_allclose(pred.boxes, ref.boxes, atol=1e-2)


def test_batch_sizes_give_identical_results(export_dir, eager_numbers):
    paths = list(eager_numbers)
    runs = [Reader(export_dir, device="cpu", batch_size=b).read(paths) for b in (1, 3, 8)]
    for preds in runs[1:]:
        for a, b in zip(runs[0], preds, strict=True):
            assert a.number == b.number
            assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)


def test_reads_without_torch_in_a_subprocess(export_dir, synth_root):
    code = f"""
import sys
for name in ("torch", "torchvision", "train", "export"):
    sys.modules[name] = None  # `import torch` now raises ImportError
from digit_reader.runtime.cli import main
sys.argv = ["digit-read", {str(synth_root / "test")!r}, "--model", {str(export_dir)!r}]
try:
    main()
finally:
    leaked = [m for m in sys.modules if m.split(".")[0] in ("torch", "train", "export")]
    assert not [m for m in leaked if sys.modules[m] is not None], leaked
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr
    in_process = _read([synth_root / "test", "--model", export_dir])
    assert done.stdout == in_process.stdout


def _make_inputs(src: list[Path], d: Path) -> dict[str, np.ndarray | None]:
    """Good, odd and broken files; returns name -> the RGB the reader should see (None = bad)."""
    d.mkdir()
    rgb = [np.asarray(Image.open(p).convert("RGB")) for p in src]
    expect = {}
    for i in range(3):
        shutil.copy(src[i], d / f"{i + 1}.png")
        expect[f"{i + 1}.png"] = rgb[i]
    (d / "4.png").write_bytes(b"")
    (d / "5.png").write_bytes(src[3].read_bytes()[:300])
    (d / "6.png").write_text("not an image\n")
    Image.new("1", (9000, 5000)).save(d / "7.png")  # 45 MP: decompression-bomb guard
    for k in (4, 5, 6, 7):
        expect[f"{k}.png"] = None
    grey = np.asarray(Image.fromarray(rgb[4]).convert("L"))
    Image.fromarray(grey.astype(np.uint16) * 257).save(d / "8.png")  # 16-bit grey
    expect["8.png"] = np.repeat(grey[:, :, None], 3, 2)
    pal = Image.fromarray(rgb[5]).convert("P", palette=Image.Palette.ADAPTIVE)
    pal.save(d / "9.png")
    expect["9.png"] = np.asarray(pal.convert("RGB"))
    Image.fromarray(grey).save(d / "10.png")
    expect["10.png"] = np.repeat(grey[:, :, None], 3, 2)
    rgba = np.dstack([rgb[6], np.full(rgb[6].shape[:2], 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(d / "11.png")
    expect["11.png"] = rgb[6]
    Image.fromarray(rgb[7]).convert("CMYK").save(d / "12.jpg", quality=95)
    expect["12.jpg"] = np.asarray(Image.open(d / "12.jpg").convert("RGB"))
    # stored rotated by 90 degrees, with EXIF orientation 6 saying "rotate back on display"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb[8]).transpose(Image.Transpose.ROTATE_90).save(
        d / "13.jpg", exif=exif, quality=95
    )
    upright = Image.open(d / "13.jpg")
    expect["13.jpg"] = np.asarray(upright.convert("RGB").transpose(Image.Transpose.ROTATE_270))
    return expect


def test_bad_inputs_are_named_and_everything_else_is_read(export_dir, test_images, tmp_path):
    expect = _make_inputs(test_images, tmp_path / "in")
    result = _read([tmp_path / "in", tmp_path / "missing.png", "--model", export_dir])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    named = {Path(line.split(":")[1].strip()).name for line in errors}
    assert named == {"4.png", "5.png", "6.png", "7.png", "missing.png"}, errors
    assert any("decompression-bomb" in e or "pixel limit" in e for e in errors)
    assert "Traceback" not in result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    good = [n for n, v in expect.items() if v is not None]
    assert [r[0] for r in rows[1:]] == [Path(n).stem for n in good]
    reader = Reader(export_dir, device="cpu")
    wanted = reader.read([expect[n] for n in good])
    assert [r[1] for r in rows[1:]] == [p.number for p in wanted]


def test_usage_errors_exit_2(export_dir, synth_root, monkeypatch):
    monkeypatch.delenv("DIGIT_MODEL", raising=False)
    no_inputs = _read(["--model", export_dir])
    assert no_inputs.exit_code == 2
    no_model = _read([synth_root / "test"])
    assert no_model.exit_code == 2 and "digit-export" in no_model.stderr
    bad_model = _read([synth_root / "test", "--model", synth_root / "nope.onnx"])
    assert bad_model.exit_code == 2 and "no such model file" in bad_model.stderr
    from_env = _read([synth_root / "test"], env={"DIGIT_MODEL": str(export_dir)})
    assert from_env.exit_code == 0


def test_threshold_option_and_fp16_model(export_dir, synth_root):
    base = _read([synth_root / "test", "--model", export_dir]).stdout
    low = _read([synth_root / "test", "--model", export_dir, "--threshold", "0.05"]).stdout
    high = _read([synth_root / "test", "--model", export_dir, "--threshold", "1.0"]).stdout
    assert low != base and all(r.endswith(",-1") for r in high.splitlines()[1:])
    fp16 = _read([synth_root / "test", "--model", export_dir / "model.fp16.onnx"])
    assert fp16.exit_code == 0 and fp16.stdout.splitlines()[0] == "image_id,pred_label"


def test_a_model_trained_on_sharpened_inputs_is_read_sharpened(export_dir, test_images, tmp_path):
    from digit_reader.runtime.modelcard import ModelCard
    from digit_reader.runtime.preprocess import load_canvas

    sharp = tmp_path / "sharp"
    shutil.copytree(export_dir, sharp)
    card = ModelCard.load(sharp / "model.json")
    card.sharpen = True
    card.save(sharp / "model.json")
    canvas = Reader(sharp, device="cpu").prepare(test_images[0]).canvas
    expected, _, _ = load_canvas(test_images[0], card.canvas, sharpen=True)
    plain, _, _ = load_canvas(test_images[0], card.canvas)
    assert np.array_equal(canvas, expected) and not np.array_equal(canvas, plain)
