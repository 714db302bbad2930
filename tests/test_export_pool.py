"""The deployable graph pools each RoI on its own level only, and that is torchvision's pooling."""

import onnx
import onnxruntime as ort
import pytest
import torch

from digit_reader.export.graph import DeployableDetector
from digit_reader.train import presets
from digit_reader.train.model import build_model


def detector(canvas):
    mcfg, _ = presets.preset("nano")
    mcfg.canvas = canvas
    torch.manual_seed(0)
    return DeployableDetector(build_model(mcfg).eval(), mcfg).eval()


def edge_boxes(h: int, w: int, n: int) -> torch.Tensor:
    """RoIs that sample the last row and column of every level (strips 10 cells of P3/P4 wide
    along the far edges, boxes in the far corner down to sub-pixel size) and random ones, for
    2 images."""
    g = torch.Generator().manual_seed(1)
    fixed = torch.tensor(
        [
            [0.0, 0.0, w, h],
            [w - 0.4, h - 0.3, w, h],
            [0.0, h - 3.0, w, h],
            [w - 3.0, 0.0, w, h],
            [w / 2, h / 2, w, h],
            [w - 17.0, h - 9.0, w, h],
            [w - 80.0, 0.0, w, h],
            [0.0, h - 80.0, w, h],
            [w - 160.0, 0.0, w, h],
            [0.0, h - 160.0, w, h],
        ]
    )
    x = torch.rand(n, 2, generator=g) * w
    y = torch.rand(n, 2, generator=g) * h
    rand = torch.stack((x.min(1)[0], y.min(1)[0], x.max(1)[0], y.max(1)[0]), 1)
    boxes = torch.cat((fixed, rand)).clamp(min=0)  # inside the canvas, as proposals are
    return boxes.unsqueeze(0).expand(2, -1, -1).contiguous()


@pytest.mark.parametrize("sampling_ratio", [1, 2])  # nano's, and torchvision's default
@pytest.mark.parametrize("canvas", [(192, 352), (256, 480), (160, 800)])
def test_one_roialign_pools_what_every_level_pools(canvas, sampling_ratio):
    det = detector(canvas)
    det.roi_sampling_ratio = sampling_ratio
    with torch.no_grad():
        features = det.backbone(torch.rand(2, 3, *canvas) * 4 - 2)
        boxes = edge_boxes(*canvas, 200)
        assert len(set(det.roi_levels(boxes).tolist())) == len(det.pooled_names)  # all used
        one, every = det.pool(features, boxes), det.pool_every_level(features, boxes)
    # the same up to float32 rounding of a RoI moved to its tile (features ~0.1; a zero border
    # instead of the repeated row and column is off by ~1e-3)
    torch.testing.assert_close(one, every, rtol=0, atol=1e-5)


def test_a_canvas_past_the_exact_limit_pools_every_level(monkeypatch):
    det = detector((192, 352))
    assert det.exact_limit > 1344  # the seed's 800x1344 canvas is pooled the fast way
    calls = []
    monkeypatch.setattr(det, "pool_every_level", lambda f, b, levels=None: calls.append(1))
    features = det.backbone(torch.zeros(2, 3, 192, 352))
    det.pool(features, edge_boxes(192, 352, 4))
    assert calls == []
    det.exact_limit = 352
    det.pool_tiles = det.tile_layout()
    det.pool(features, edge_boxes(192, 352, 4))
    assert calls == [1]


def test_a_canvas_where_every_roi_maps_to_the_first_level_pools_it_alone_bit_for_bit():
    det = detector((64, 128))  # nano's: no RoI inside it reaches P3 (sqrt(area) < 112 px)
    assert det.pool_levels == 1 and detector((192, 352)).pool_levels == 3
    with torch.no_grad():
        features = det.backbone(torch.rand(2, 3, 64, 128))
        boxes = edge_boxes(64, 128, 100)
        assert torch.equal(det.pool(features, boxes), det.pool_every_level(features, boxes))


class _Pool(torch.nn.Module):
    def __init__(self, det):
        super().__init__()
        self.det = det

    def forward(self, p2, p3, p4, boxes):
        return self.det.pool({"0": p2, "1": p3, "2": p4}, boxes)


def test_onnx_runtime_pools_the_stacked_levels_as_torchvision_does(tmp_path):
    det = detector((192, 352))
    det.roi_sampling_ratio = 2
    with torch.no_grad():
        features = det.backbone(torch.rand(2, 3, 192, 352) * 4 - 2)
        boxes = edge_boxes(192, 352, 200)
        every = det.pool_every_level(features, boxes)
    inputs = (features["0"], features["1"], features["2"], boxes)
    torch.onnx.export(
        _Pool(det).eval(), inputs, tmp_path / "pool.onnx", dynamo=True, opset_version=18
    )
    session = ort.InferenceSession(tmp_path / "pool.onnx", providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    (got,) = session.run(None, dict(zip(names, (t.numpy() for t in inputs), strict=True)))
    ops = [n.op_type for n in onnx.load(tmp_path / "pool.onnx").graph.node]
    assert ops.count("RoiAlign") == 1 and "Where" not in ops
    torch.testing.assert_close(torch.from_numpy(got), every, rtol=0, atol=1e-5)
