"""Drawings of predictions, checked pixel by pixel, and digit-read's --draw / --sheet."""

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from digit_reader.runtime import draw
from digit_reader.runtime.decode import Prediction

GREY = (128, 128, 128)


def _pred(boxes, scores, digits):
    return Prediction.from_detections(np.array(boxes, np.float32), scores, digits)


def _colour_mask(img: Image.Image, colour) -> np.ndarray:
    return np.all(np.asarray(img) == np.array(colour, np.uint8), axis=2)


def test_kept_box_colour_lies_on_the_box_edges_and_nowhere_else():
    blank = np.full((40, 100, 3), GREY, np.uint8)
    pred = _pred([[10, 12, 30, 36], [60, 14, 80, 36]], [0.9, 0.3], [7, 1])  # the second is dropped
    out = draw.draw_prediction(blank, pred)
    k = draw.enlargement(40)
    assert k == 5 and out.height == 40 * k + 24  # enlarged 5x (nearest), banner on top
    mask = _colour_mask(out, draw.KEPT)
    x1, y1, x2, y2 = 10 * k, 12 * k + 24, 30 * k - 1, 36 * k + 24 - 1
    edges = np.zeros_like(mask)
    w = draw.BOX_WIDTH
    edges[y1 : y2 + 1, x1 : x1 + w] = edges[y1 : y2 + 1, x2 - w + 1 : x2 + 1] = True
    edges[y1 : y1 + w, x1 : x2 + 1] = edges[y2 - w + 1 : y2 + 1, x1 : x2 + 1] = True
    assert mask[edges].all()  # the whole outline, in the box colour
    assert not mask[~edges].any()  # and that colour nowhere else: not for the dropped box
    assert not _colour_mask(out, draw.FAINT).any()
    inside = np.asarray(out)[y1 + w + 1 : y2 - w, x1 + w + 1 : x2 - w]
    assert (inside == GREY).all()  # the image under the box is untouched


def test_a_box_thinner_than_a_pixel_is_drawn_one_pixel_wide():
    """A kept box can be under a pixel high once brought back from a large canvas."""
    blank = np.full((100, 100, 3), GREY, np.uint8)
    out = draw.draw_prediction(blank, _pred([[10, 20.1, 30, 20.4]], [0.9], [4]))
    assert _colour_mask(out, draw.KEPT).any()


def test_draw_all_adds_the_dropped_boxes_faintly():
    blank = np.full((40, 100, 3), GREY, np.uint8)
    pred = _pred([[10, 12, 30, 36], [60, 14, 80, 36]], [0.9, 0.3], [7, 1])
    faint = _colour_mask(draw.draw_prediction(blank, pred, draw_all=True), draw.FAINT)
    k = draw.enlargement(40)
    ys, xs = np.nonzero(faint)
    assert (xs.min(), xs.max()) == (60 * k, 80 * k - 1)
    assert (ys.min(), ys.max()) == (14 * k + 24, 36 * k + 24 - 1)


def test_no_digit_gets_the_minus_one_banner():
    blank = np.full((40, 100, 3), GREY, np.uint8)
    out = draw.draw_prediction(blank, _pred(np.zeros((0, 4)), [], []))
    expected = Image.new("RGB", (out.width, 24), draw.BANNER_BG)
    ImageDraw.Draw(expected).text(
        (6, 4), "number: no digit (-1)", fill=draw.BANNER_FG, font=draw._font(15)
    )
    assert np.array_equal(np.asarray(out)[:24], np.asarray(expected))
    other = draw.draw_prediction(blank, _pred([[10, 12, 30, 36]], [0.9], [7]))
    assert not np.array_equal(np.asarray(other)[:24], np.asarray(expected))


def test_contact_sheet_places_every_drawing_in_its_cell():
    tiles = [Image.new("RGB", (60, 30), (i * 40, 0, 0)) for i in range(1, 6)]
    sheet = draw.contact_sheet(tiles, columns=3, cell=(60, 30))
    assert sheet.size == (3 * 66 + 6, 2 * 36 + 6)
    for i in range(5):
        r, c = divmod(i, 3)
        assert sheet.getpixel((6 + c * 66 + 30, 6 + r * 36 + 15)) == (i * 40 + 40, 0, 0)


@pytest.mark.slow
def test_digit_read_draws_every_good_image_and_none_for_a_bad_one(export_dir, synth_root, tmp_path):
    from digit_reader.runtime.cli import main

    images = sorted((synth_root / "test").glob("*.png"))[:5]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    out, sheet = tmp_path / "drawn", tmp_path / "sheet.png"
    args = [*map(str, images), str(bad), "--model", str(export_dir), "--draw", str(out)]
    result = CliRunner().invoke(main, [*args, "--sheet", str(sheet)])
    assert result.exit_code == 1
    assert f"error: {bad}:" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in images)
    sames = []
    for p in images:
        drawing = np.asarray(Image.open(out / p.name).convert("RGB"))
        src = np.asarray(Image.open(p).convert("RGB"))
        k = draw.enlargement(src.shape[0])
        enlarged = src.repeat(k, axis=0).repeat(k, axis=1)
        picture = drawing[24 : 24 + enlarged.shape[0], : enlarged.shape[1]]
        sames.append(np.all(picture == enlarged, axis=2).mean())
    assert min(sames) > 0.7  # the image itself, enlarged, under a few boxes and labels
    assert min(sames) < 1.0  # and some boxes on it
    assert Image.open(sheet).size == draw.contact_sheet([Image.new("RGB", (9, 9))] * 5).size


def test_every_path_draws_through_the_shared_output(tmp_path):
    """Local, Triton and Ray results all reach ResultWriter; it draws whatever carries number,
    boxes, scores and digits (here: a result as --ray's driver gets it, plain lists)."""
    import io
    from types import SimpleNamespace

    from digit_reader.runtime.output import ResultWriter

    image = tmp_path / "5.png"
    Image.fromarray(np.full((40, 100, 3), GREY, np.uint8)).save(image)
    as_from_ray = SimpleNamespace(
        number="7", boxes=[[10.0, 12.0, 30.0, 36.0]], scores=[0.9], digits=[7]
    )
    writer = ResultWriter(
        io.StringIO(), drawer=draw.Drawer(tmp_path / "drawn"), threshold=0.5, on_error=print
    )
    writer.add(image, as_from_ray)
    assert writer.finish(0.1) == 0
    drawing = Image.open(tmp_path / "drawn" / "5.png").convert("RGB")
    assert np.array_equal(
        np.asarray(drawing),
        np.asarray(
            draw.draw_prediction(
                np.asarray(Image.open(image)), _pred(as_from_ray.boxes, [0.9], [7])
            )
        ),
    )
