"""The model is the report's: anchors, classes, no second resize, config round trip."""

import json

import pytest
import torch
from torchvision.models.detection.image_list import ImageList

from digit_reader.runtime.errors import UserError
from digit_reader.train import presets
from digit_reader.train.config import ModelConfig
from digit_reader.train.model import build_model, resolve_backbone_weights


def test_seed_model_has_report_anchors_and_11_classes():
    mcfg, _ = presets.preset("all")
    assert mcfg.backbone == "resnet101" and mcfg.canvas == (800, 1344)
    model = build_model(mcfg)
    gen = model.rpn.anchor_generator
    assert gen.sizes == ((16,), (32,), (64,), (128,), (256,))
    assert gen.aspect_ratios == ((0.25, 0.5, 1.0, 2.0, 4.0),) * 5
    # the anchors the RPN lays out on the five FPN levels of a 128x128 input: at every
    # location 5, one per ratio (height / width) at the level's size, and 5 scores for them
    strides = (4, 8, 16, 32, 64)
    feats = [torch.zeros(1, 8, 128 // s, 128 // s) for s in strides]
    anchors = gen(ImageList(torch.zeros(1, 3, 128, 128), [(128, 128)]), feats)[0]
    counts = [(128 // s) ** 2 * 5 for s in strides]
    assert len(anchors) == sum(counts)
    for (size,), level in zip(gen.sizes, anchors.split(counts), strict=True):
        wh = level[:, 2:] - level[:, :2]
        shapes = sorted({(float(w), float(h)) for w, h in wh.tolist()}, key=lambda s: s[1] / s[0])
        assert len(shapes) == 5, size
        assert [h / w for w, h in shapes] == pytest.approx([0.25, 0.5, 1, 2, 4], rel=0.1)
        assert [(w * h) ** 0.5 for w, h in shapes] == pytest.approx([size] * 5, rel=0.05)
    assert model.rpn.head.cls_logits.out_channels == 5
    assert model.roi_heads.box_predictor.cls_score.out_features == 11
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 44
    assert type(model.backbone.body.layer3[22]).__name__ == "Bottleneck"  # 23 blocks: R101


def test_res101_preset_uses_torchvision_default_anchors():
    mcfg, tcfg = presets.preset("res101")
    assert mcfg.anchor_sizes == ((32,), (64,), (128,), (256,), (512,))
    assert mcfg.aspect_ratios == ((0.5, 1.0, 2.0),) * 5
    assert tcfg.t0 is None  # no restarts
    assert presets.preset("restart")[1].t0 == 10_000
    assert presets.preset("anchor")[0].aspect_ratios[0] == (0.25, 0.5, 1.0, 2.0, 4.0)


def test_nano_canvas_is_not_resized_and_postprocess_keeps_canvas_pixels():
    mcfg, _ = presets.preset("nano")
    model = build_model(mcfg).eval()
    x = torch.rand(3, *mcfg.canvas)
    images, _ = model.transform([x])
    assert tuple(images.tensors.shape[-2:]) == mcfg.canvas
    assert images.image_sizes == [mcfg.canvas]
    mean = torch.tensor(mcfg.image_mean)[:, None, None]
    std = torch.tensor(mcfg.image_std)[:, None, None]
    torch.testing.assert_close(images.tensors[0], (x - mean) / std)
    boxes = torch.tensor([[1.0, 2.0, 30.0, 40.0]])
    out = model.transform.postprocess([{"boxes": boxes}], [mcfg.canvas], [mcfg.canvas])
    torch.testing.assert_close(out[0]["boxes"], boxes)


def test_nano_rpn_nms_is_looser_in_training_than_at_test_time():
    mcfg, _ = presets.preset("nano")
    model = build_model(mcfg)
    assert model.rpn.train().nms_thresh == mcfg.rpn_nms_thresh_train == 0.7
    assert model.rpn.eval().nms_thresh == mcfg.rpn_nms_thresh == 0.5
    seed = build_model(ModelConfig(canvas=(64, 128)))
    assert type(seed.rpn).__name__ == "RegionProposalNetwork"  # stock when not split


def test_config_round_trips_through_json():
    mcfg, _ = presets.preset("nano")
    back = ModelConfig.from_dict(json.loads(json.dumps(mcfg.to_dict())))
    assert back == mcfg
    with pytest.raises(UserError, match="unknown field"):
        ModelConfig.from_dict({**mcfg.to_dict(), "bogus": 1})


def test_bad_canvas_is_a_user_error():
    with pytest.raises(UserError, match="multiples of 32"):
        build_model(ModelConfig(backbone="nano", canvas=(60, 128), anchor_sizes=((16,),) * 4))


def test_missing_imagenet_weights_says_which_file_goes_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError) as e:
        resolve_backbone_weights("resnet101", None, pretrained=True)
    msg = str(e.value)
    assert "resnet101-cd907fc2.pth" in msg
    assert str(tmp_path / "hub" / "checkpoints" / "resnet101-cd907fc2.pth") in msg
    assert "--no-pretrained" in msg and "\n" not in msg
    assert resolve_backbone_weights("resnet101", None, pretrained=False) is None


def test_backbone_weights_file_is_loaded(tmp_path):
    from torchvision.models import resnet50

    net = resnet50(weights=None)
    path = tmp_path / "r50.pth"
    torch.save(net.state_dict(), path)
    mcfg = ModelConfig(backbone="resnet50", canvas=(64, 128))
    model = build_model(mcfg, backbone_weights=resolve_backbone_weights("resnet50", path, True))
    torch.testing.assert_close(model.backbone.body.conv1.weight, net.conv1.weight)
    torch.save({"not": torch.zeros(1)}, path)
    with pytest.raises(UserError, match="conv1.weight"):
        build_model(mcfg, backbone_weights=path)
