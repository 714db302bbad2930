"""Augmentation keeps labels true; the dataset feeds the preprocessing contract; checkpoints."""

import numpy as np
import pytest
import torch

from digit_reader.runtime.errors import UserError
from digit_reader.runtime.preprocess import letterbox, open_rgb
from digit_reader.train import checkpoint, presets, transforms
from digit_reader.train.data.hw2 import CocoWriter, load_split
from digit_reader.train.dataset import DigitDataset, epoch_batches


def _image(rng) -> tuple[np.ndarray, np.ndarray]:
    rgb = rng.integers(0, 256, size=(40, 90, 3), dtype=np.uint8)
    boxes = np.array([[10, 5, 22, 35], [24, 6, 37, 36]], dtype=np.float32)
    return rgb, boxes


@pytest.mark.parametrize("seed", range(20))
def test_reframe_moves_boxes_with_their_pixels(seed):
    rng = np.random.default_rng(seed)
    rgb, boxes = _image(rng)
    out, moved = transforms.reframe(rgb, boxes, rng, zoom=(0.5, 2.0), aspect_jitter=0.3, shift=0.3)
    h, w = out.shape[:2]
    assert (moved[:, :2] >= 0).all() and (moved[:, 2] <= w).all() and (moved[:, 3] <= h).all()
    for (x1, y1, x2, y2), (a1, b1, a2, b2) in zip(
        boxes.astype(int), moved.astype(int), strict=True
    ):
        np.testing.assert_array_equal(out[b1:b2, a1:a2], rgb[y1:y2, x1:x2])


def test_photometric_changes_colours_by_seed_but_not_where_things_are():
    """A plate (one colour) on a wall (another): every seed recolours the image its own way and
    reproducibly, yet the plate stays one colour, in place, apart from the wall."""
    rgb = np.empty((40, 90, 3), np.uint8)
    rgb[:] = (200, 190, 180)
    rgb[10:30, 20:60] = (30, 60, 90)
    plate, wall = (slice(15, 25), slice(25, 55)), (slice(0, 40), slice(70, 90))  # 5 px off edges
    seen = set()
    for seed in range(20):
        out = transforms.photometric(rgb, np.random.default_rng(seed), 0.3)
        again = transforms.photometric(rgb, np.random.default_rng(seed), 0.3)
        assert out.shape == rgb.shape and out.dtype == np.uint8
        assert np.array_equal(out, again)
        assert not np.array_equal(out, rgb), seed
        seen.add(out.tobytes())
        inside, outside = out[plate].reshape(-1, 3), out[wall].reshape(-1, 3)
        assert (np.ptp(inside, axis=0) <= 1).all() and (np.ptp(outside, axis=0) <= 1).all()
        contrast = np.abs(inside.mean(0) - outside.mean(0)).sum()
        assert contrast > 100, (seed, contrast)
    assert len(seen) == 20
    assert transforms.photometric(rgb, np.random.default_rng(0), 0.0) is rgb


@pytest.fixture
def tiny(tmp_path):
    from PIL import Image, ImageDraw

    (tmp_path / "train").mkdir()
    writer = CocoWriter()
    for i in range(1, 4):
        img = Image.new("RGB", (60 + 10 * i, 30), (200, 190, 180))
        ImageDraw.Draw(img).text((8, 8), str(i * 7), fill=(0, 0, 0))
        img.save(tmp_path / "train" / f"{i}.png")
        writer.add(i, f"{i}.png", img.width, img.height, [[7, 7, 7, 12], [14, 7, 7, 12]], [i, 7])
    writer.save(tmp_path / "train.json")
    return load_split(tmp_path, "train")


def test_eval_items_are_the_letterbox_contract(tiny):
    mcfg, tcfg = presets.preset("nano")
    ds = DigitDataset(tiny, mcfg.canvas, tcfg, train=False)
    image, target, meta = ds[(1, 0)]
    canvas, scale = letterbox(open_rgb(tiny[1].path), mcfg.canvas)
    assert torch.equal(image, torch.from_numpy(canvas).permute(2, 0, 1))
    assert meta["scale"] == scale and meta["size"] == (tiny[1].width, tiny[1].height)
    torch.testing.assert_close(target["boxes"], torch.from_numpy(tiny[1].boxes) * scale)
    assert target["labels"].tolist() == [3, 8]  # digit + 1


def test_train_items_are_deterministic_per_epoch_and_inside_the_canvas(tiny):
    mcfg, tcfg = presets.preset("nano")
    ds = DigitDataset(tiny, mcfg.canvas, tcfg, train=True)
    a, b, c = ds[(0, 1)], ds[(0, 1)], ds[(0, 2)]
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    for e in range(10):
        boxes = ds[(2, e)][1]["boxes"]
        assert (boxes >= 0).all() and (boxes[:, 2] <= 128).all() and (boxes[:, 3] <= 64).all()


def test_epoch_batches_split_ranks_without_overlap():
    one = [k for b in epoch_batches(10, 4, epoch=3, seed=0) for k in b]
    ranks = [[k for b in epoch_batches(10, 4, 3, 0, rank=r, world=2) for k in b] for r in (0, 1)]
    assert sorted(one) == [(i, 3) for i in range(10)]
    assert sorted(ranks[0] + ranks[1]) == sorted(one)
    other = [i for b in epoch_batches(10, 4, epoch=4, seed=0) for i, _ in b]
    assert [i for i, _ in one] != other  # reshuffled every epoch


def test_checkpoint_round_trip_and_refusals(tmp_path):
    path = tmp_path / "x.pt"
    checkpoint.save_checkpoint(path, {"step": 3, "model_config": {"a": (1, 2)}})
    state = checkpoint.load_checkpoint(path)
    assert state["step"] == 3 and state["model_config"] == {"a": (1, 2)}
    with pytest.raises(UserError, match="no such checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a digit-reader checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(UserError, match="not a digit-reader checkpoint"):
        checkpoint.load_model(tmp_path / "plain.pt")
    with pytest.raises(UserError, match="no best.pt"):
        checkpoint.load_model(tmp_path)
