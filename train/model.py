"""The detector: a stock torchvision FasterRCNN whose every setting lives in ModelConfig.

Export rebuilds the same function as a static graph from these modules and this config, so
nothing here may hide behaviour outside torchvision's standard modules (backbone = body + FPN,
rpn, roi_heads, transform). The only subclass is the transform, whose resize is a no-op: the
model sees exactly the letterboxed canvas of runtime.preprocess.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from digit_reader.runtime.errors import UserError
from digit_reader.train.config import ModelConfig


class CanvasTransform(GeneralizedRCNNTransform):
    """Normalise and batch only: the input already is the letterboxed canvas, never rescaled."""

    def resize(self, image, target=None):
        return image, target


class TrainTestRPN(RegionProposalNetwork):
    """torchvision's RPN with its NMS IoU split into training and testing, like its top-n.

    In eval mode `nms_thresh` is the test value, so code reading the stock attribute (export)
    sees the deployed function. Training with looser NMS keeps more overlapping proposals as
    RoI-head samples; testing with stricter NMS removes near-duplicate proposals before they can
    each become a box of a different digit (per-class box NMS cannot suppress across digits).
    """

    def __init__(self, *args, nms_thresh_train: float, **kwargs):
        super().__init__(*args, **kwargs)
        self._nms_thresh_train = nms_thresh_train

    @property
    def nms_thresh(self) -> float:
        return self._nms_thresh_train if self.training else self._nms_thresh_test

    @nms_thresh.setter
    def nms_thresh(self, value: float) -> None:
        self._nms_thresh_test = value


class NanoBody(nn.Module):
    """A small from-scratch CNN for CPU runs: stem (stride 2) and three stages (4, 8, 16).

    Plain 3x3 conv-BN-ReLU blocks: on 2 CPU cores dense small convolutions beat depthwise ones.
    """

    def __init__(self, channels: tuple[int, ...], norm: str = "bn"):
        super().__init__()
        c0, c1, c2, c3 = channels
        self.stem = nn.Sequential(_conv(3, c0, 2, norm), _conv(c0, c0, 1, norm))
        self.layer1 = nn.Sequential(_conv(c0, c1, 2, norm), _conv(c1, c1, 1, norm))
        self.layer2 = nn.Sequential(_conv(c1, c2, 2, norm), _conv(c2, c2, 1, norm))
        self.layer3 = nn.Sequential(_conv(c2, c3, 2, norm), _conv(c3, c3, 1, norm))

    def forward(self, x):
        x = self.stem(x)
        return self.layer3(self.layer2(self.layer1(x)))


def _conv(cin: int, cout: int, stride: int, norm: str) -> nn.Sequential:
    bn = FrozenBatchNorm2d(cout) if norm == "frozen_bn" else nn.BatchNorm2d(cout)
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), bn, nn.ReLU(inplace=True))


def build_backbone(cfg: ModelConfig, backbone_weights: str | Path | None = None) -> BackboneWithFPN:
    norm_layer = FrozenBatchNorm2d if cfg.norm == "frozen_bn" else nn.BatchNorm2d
    if cfg.backbone == "nano":
        if backbone_weights is not None:
            raise UserError("the nano backbone has no ImageNet weights; drop --backbone-weights")
        body = NanoBody(cfg.nano_channels, cfg.norm)
        return BackboneWithFPN(
            body,
            return_layers={"layer1": "0", "layer2": "1", "layer3": "2"},
            in_channels_list=list(cfg.nano_channels[1:]),
            out_channels=cfg.fpn_channels,
            extra_blocks=LastLevelMaxPool(),
        )
    net = getattr(resnet, cfg.backbone)(weights=None, norm_layer=norm_layer)
    if backbone_weights is not None:
        net.load_state_dict(load_backbone_state(backbone_weights, cfg.backbone))
    backbone = _resnet_fpn_extractor(net, cfg.trainable_layers)
    if cfg.fpn_channels != backbone.out_channels:
        raise UserError(f"resnet FPN backbones have 256 channels, config says {cfg.fpn_channels}")
    return backbone


def load_backbone_state(path: str | Path, backbone: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such backbone weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"{path}: not a torch state dict ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or "conv1.weight" not in state:
        raise UserError(f"{path}: not an ImageNet {backbone} state dict (no conv1.weight)")
    return state


def build_model(cfg: ModelConfig, backbone_weights: str | Path | None = None) -> FasterRCNN:
    """A torchvision FasterRCNN for `cfg`; `backbone_weights` is an ImageNet state-dict file."""
    cfg.validate()
    backbone = build_backbone(cfg, backbone_weights)
    anchors = AnchorGenerator(sizes=cfg.anchor_sizes, aspect_ratios=cfg.aspect_ratios)
    featmaps = [str(i) for i in range(cfg.levels - 1)]  # the max-pool level is not pooled from
    roi_pool = MultiScaleRoIAlign(featmaps, cfg.roi_output_size, cfg.roi_sampling_ratio)
    head_in = cfg.fpn_channels * cfg.roi_output_size**2
    model = FasterRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(cfg.fpn_channels, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_nms_thresh=cfg.rpn_nms_thresh,
        rpn_fg_iou_thresh=cfg.rpn_fg_iou_thresh,
        rpn_bg_iou_thresh=cfg.rpn_bg_iou_thresh,
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        rpn_positive_fraction=cfg.rpn_positive_fraction,
        rpn_score_thresh=cfg.rpn_score_thresh,
        box_roi_pool=roi_pool,
        box_head=TwoMLPHead(head_in, cfg.representation_size),
        box_predictor=FastRCNNPredictor(cfg.representation_size, cfg.num_classes),
        box_score_thresh=cfg.box_score_thresh,
        box_nms_thresh=cfg.box_nms_thresh,
        box_detections_per_img=cfg.box_detections_per_img,
        box_fg_iou_thresh=cfg.box_fg_iou_thresh,
        box_bg_iou_thresh=cfg.box_bg_iou_thresh,
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_positive_fraction=cfg.box_positive_fraction,
    )
    if cfg.rpn_nms_thresh_train not in (None, cfg.rpn_nms_thresh):
        rpn = model.rpn
        model.rpn = TrainTestRPN(
            rpn.anchor_generator,
            rpn.head,
            cfg.rpn_fg_iou_thresh,
            cfg.rpn_bg_iou_thresh,
            cfg.rpn_batch_size_per_image,
            cfg.rpn_positive_fraction,
            rpn._pre_nms_top_n,
            rpn._post_nms_top_n,
            cfg.rpn_nms_thresh,
            score_thresh=cfg.rpn_score_thresh,
            nms_thresh_train=cfg.rpn_nms_thresh_train,
        )
    h, w = cfg.canvas
    model.transform = CanvasTransform(
        min_size=h, max_size=w, image_mean=list(cfg.image_mean), image_std=list(cfg.image_std)
    )
    return model


def imagenet_weights(backbone: str):
    """torchvision's ImageNet weights enum entry for a resnet backbone (V2 where it exists)."""
    from torchvision.models import get_model_weights

    return get_model_weights(backbone).IMAGENET1K_V2


def cached_weights_path(backbone: str) -> Path:
    """Where torchvision's weights API caches the ImageNet file (under TORCH_HOME)."""
    url = imagenet_weights(backbone).url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def resolve_backbone_weights(
    backbone: str, weights_file: str | Path | None, pretrained: bool
) -> Path | None:
    """The ImageNet state-dict file to start from, or None to train from scratch.

    These machines cannot download, so a missing cache entry is a one-line instruction, not a
    download attempt.
    """
    if weights_file is not None:
        if not pretrained:
            raise UserError("--backbone-weights and --no-pretrained contradict each other")
        return Path(weights_file)
    if not pretrained or backbone == "nano":
        return None
    path = cached_weights_path(backbone)
    if not path.is_file():
        url = imagenet_weights(backbone).url
        raise UserError(
            f"ImageNet weights for {backbone} are not cached: put {Path(url).name} (from {url}) "
            f"at {path}, or pass --backbone-weights FILE, or train from scratch (--no-pretrained)"
        )
    return path
