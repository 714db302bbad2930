"""The preprocessing contract on real image files: every PIL mode to RGB, bad files, letterbox."""

import numpy as np
import pytest
from PIL import Image

from digit_reader.runtime.errors import ImageError
from digit_reader.runtime.preprocess import (
    boxes_from_canvas,
    boxes_to_canvas,
    letterbox,
    load_canvas,
    open_rgb,
    read_encoded,
)


def _check_rgb(rgb, hw):
    assert rgb.dtype == np.uint8 and rgb.shape == (*hw, 3)
    return rgb


def test_rgb_png(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    np.testing.assert_array_equal(open_rgb(tmp_path / "a.png"), arr)


def test_palette_png_without_and_with_transparency(tmp_path):
    img = Image.new("P", (6, 4))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(1, (3, 0, 6, 4))
    img.save(tmp_path / "p.png")
    img.save(tmp_path / "pt.png", transparency=1)
    assert Image.open(tmp_path / "pt.png").info.get("transparency") == 1
    for name in ("p.png", "pt.png"):
        rgb = _check_rgb(open_rgb(tmp_path / name), (4, 6))
        assert rgb[0, 0].tolist() == [255, 0, 0]
        assert rgb[0, 5].tolist() == [0, 0, 255]  # transparent index keeps its colour


def test_grey_and_alpha_modes(tmp_path):
    Image.fromarray(np.full((3, 4), 77, np.uint8), "L").save(tmp_path / "l.png")
    la = Image.merge("LA", [Image.new("L", (4, 3), 99), Image.new("L", (4, 3), 0)])
    la.save(tmp_path / "la.png")
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[...] = (10, 20, 30, 0)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    assert (_check_rgb(open_rgb(tmp_path / "l.png"), (3, 4)) == 77).all()
    assert (_check_rgb(open_rgb(tmp_path / "la.png"), (3, 4)) == 99).all()
    assert (_check_rgb(open_rgb(tmp_path / "rgba.png"), (3, 4)) == (10, 20, 30)).all()


def test_16_bit_grey_keeps_top_8_bits(tmp_path):
    arr = np.array([[0, 255, 256, 0x1234, 65535]], np.uint16)
    Image.fromarray(arr).save(tmp_path / "i16.png")
    assert Image.open(tmp_path / "i16.png").mode.startswith("I")
    rgb = _check_rgb(open_rgb(tmp_path / "i16.png"), (1, 5))
    assert rgb[0, :, 0].tolist() == [0, 0, 1, 0x12, 255]
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    r, g, b = _check_rgb(open_rgb(tmp_path / "c.jpg"), (8, 16)).reshape(-1, 3).mean(0)
    assert r > 230 and g < 25 and b < 25  # pure red


def test_jpeg_exif_orientation_6_is_applied(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:10, :20] = 255  # bright top-left quadrant of the stored pixels
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    img.save(tmp_path / "o.jpg", exif=exif, quality=95)
    rgb = _check_rgb(open_rgb(tmp_path / "o.jpg"), (40, 20))  # portrait after rotation
    grey = rgb.mean(2)
    assert grey[:20, 10:].mean() > 200  # stored top-left is now top-right
    assert grey[:20, :10].mean() < 50 and grey[20:].mean() < 50


def test_pil_image_input_also_transposed():
    img = Image.new("RGB", (4, 2))
    exif = img.getexif()
    exif[0x0112] = 8
    img.info["exif"] = exif.tobytes()
    assert open_rgb(img).shape == (4, 2, 3)


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file (0 bytes)"),
        (b"hello, not an image\n", "not an image file PIL can read"),
        ("truncated", "truncated or corrupt image data"),
        ("truncated-jpeg", "truncated or corrupt image data"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path, content, reason):
    if isinstance(content, str):
        noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        fmt = "JPEG" if content.endswith("jpeg") else "PNG"
        Image.fromarray(noise).save(tmp_path / "full", format=fmt)
        content = (tmp_path / "full").read_bytes()[:2000]
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageError) as e:
        open_rgb(path)
    assert str(e.value) == f"{path}: {reason}" or str(e.value).startswith(f"{path}: {reason}")
    assert e.value.path == path and "\n" not in str(e.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        open_rgb(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="is a directory"):
        open_rgb(tmp_path)


def test_decompression_bomb_guard(tmp_path):
    Image.new("1", (8000, 5001)).save(tmp_path / "big.png")  # 40.0 MP of 1-bit: a tiny file
    assert (tmp_path / "big.png").stat().st_size < 100_000
    with pytest.raises(ImageError, match="over the 40,000,000-pixel limit"):
        open_rgb(tmp_path / "big.png")
    Image.new("RGB", (20, 20)).save(tmp_path / "small.png")
    with pytest.raises(ImageError, match="decompression-bomb guard"):
        open_rgb(tmp_path / "small.png", max_pixels=399)
    assert open_rgb(tmp_path / "small.png", max_pixels=400).shape == (20, 20, 3)


@pytest.mark.parametrize(
    "hw, canvas",
    [((20, 50), (64, 64)), ((33, 17), (64, 128)), ((300, 200), (64, 96)), ((7, 7), (32, 32))],
)
def test_letterbox_top_left_zero_elsewhere_and_scale(hw, canvas):
    h, w = hw
    rgb = np.full((h, w, 3), 255, np.uint8)
    out, scale = letterbox(rgb, canvas)
    assert out.shape == (*canvas, 3) and out.dtype == np.uint8
    assert scale == pytest.approx(min(canvas[0] / h, canvas[1] / w))
    new_h, new_w = round(h * scale), round(w * scale)
    assert new_h == canvas[0] or new_w == canvas[1]  # one side fills the canvas
    assert (out[:new_h, :new_w] == 255).all()  # content at the top-left
    mask = np.ones(canvas, bool)
    mask[:new_h, :new_w] = False
    assert (out[mask] == 0).all()  # zeros elsewhere
    # The image's own outline maps onto the pasted content within half a pixel.
    edge = boxes_to_canvas(np.array([[0, 0, w, h]]), scale)[0]
    assert abs(edge[2] - new_w) <= 0.5 and abs(edge[3] - new_h) <= 0.5


def test_box_round_trip_within_half_a_pixel():
    rng = np.random.default_rng(2)
    for _ in range(50):
        h, w = rng.integers(8, 400, 2)
        canvas = tuple(int(v) for v in rng.integers(16, 800, 2))
        _, scale = letterbox(np.zeros((h, w, 3), np.uint8), canvas)
        x1, y1 = rng.uniform(0, w - 2), rng.uniform(0, h - 2)
        boxes = np.array([[x1, y1, rng.uniform(x1 + 1, w), rng.uniform(y1 + 1, h)]])
        back = boxes_from_canvas(boxes_to_canvas(boxes, scale), scale, (w, h))
        assert np.abs(back - boxes).max() < 0.5


def test_boxes_from_canvas_clips_to_image():
    got = boxes_from_canvas(np.array([[-4.0, 2, 300, 30]]), 2.0, (100, 10))
    assert got.tolist() == [[0, 1, 100, 10]]


def test_load_canvas_is_chw(tmp_path):
    Image.fromarray(np.full((10, 30, 3), (1, 2, 3), np.uint8)).save(tmp_path / "x.png")
    chw, scale, wh = load_canvas(tmp_path / "x.png", (20, 20))
    assert chw.shape == (3, 20, 20) and chw.flags["C_CONTIGUOUS"]
    assert wh == (30, 10) and scale == pytest.approx(2 / 3)
    assert chw[:, 0, 0].tolist() == [1, 2, 3] and (chw[:, 7:, :] == 0).all()


def test_arrays_are_inputs_too():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert (open_rgb(grey)[..., 2] == grey).all()
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0] = 9
    assert open_rgb(rgba).shape == (3, 4, 3) and (open_rgb(rgba)[..., 0] == 9).all()
    for bad in (np.zeros((3, 4), np.float32), np.zeros((3, 4, 2), np.uint8), np.zeros(5, np.uint8)):
        with pytest.raises(ImageError, match="arrays must be uint8"):
            open_rgb(bad)


def test_bytes_read_elsewhere_follow_the_same_contract_as_the_file(tmp_path):
    """read_encoded + open_rgb(EncodedImage) (digit-read --ray's read stage, then its actors)
    give the file's pixels, or the file's own error message, for every kind of input."""
    noise = np.random.default_rng(2).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "good.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(noise).save(tmp_path / "rotated.jpg", exif=exif)
    Image.fromarray(noise).save(tmp_path / "full.png")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "full.png").read_bytes()[:300])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image\n")
    Image.new("1", (8000, 5001)).save(tmp_path / "bomb.png")
    (tmp_path / "dir.png").mkdir()
    names = ["good.png", "rotated.jpg", "truncated.png", "empty.png", "text.png", "bomb.png"]
    outcomes = set()
    for name in [*names, "dir.png", "missing.png"]:
        path = tmp_path / name
        try:
            want = open_rgb(path)
        except ImageError as e:
            want = str(e)
        try:
            got = open_rgb(read_encoded(path))
        except ImageError as e:
            got = str(e)
        if isinstance(want, str):
            assert got == want, name
            outcomes.add(want.split(": ", 1)[1].split(" (")[0])
        else:
            np.testing.assert_array_equal(got, want)
    assert outcomes >= {"empty file", "no such file", "is a directory, not an image"}
    assert open_rgb(read_encoded(tmp_path / "rotated.jpg")).shape == (40, 30, 3)
