"""The detector: a stock torchvision FasterRCNN whose every setting lives in ModelConfig.

Export rebuilds the same function as a static graph from these modules and this config, so
nothing here may hide behaviour outside torchvision's standard modules (backbone = body + FPN,
rpn, roi_heads, transform). The only subclass is the transform, whose resize is a no-op: the
model sees exactly the letterboxed canvas of runtime.preprocess.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
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

RESNETS = ("resnet50", "resnet101", "resnext50_32x4d", "resnext101_32x8d")
BACKBONES = (*RESNETS, "nano")
# The report's anchors: one size per FPN level x five aspect ratios (height / width) = 25 anchors.
REPORT_ANCHOR_SIZES = ((16,), (32,), (64,), (128,), (256,))
REPORT_ASPECT_RATIOS = ((0.25, 0.5, 1.0, 2.0, 4.0),) * 5
# torchvision's defaults, the report's "Res101" baseline.
TORCHVISION_ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))
TORCHVISION_ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * 5
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelConfig:
    """Everything needed to rebuild the model's function; defaults are the seed's final model."""

    backbone: str = "resnet101"
    canvas: tuple[int, int] = (800, 1344)  # (H, W) of the letterbox canvas, multiples of 32
    num_classes: int = 11  # background + digits 0-9; model label = category_id = digit + 1
    anchor_sizes: tuple[tuple[int, ...], ...] = REPORT_ANCHOR_SIZES
    aspect_ratios: tuple[tuple[float, ...], ...] = REPORT_ASPECT_RATIOS
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    # backbone
    norm: str = "frozen_bn"  # "frozen_bn" (ImageNet-initialised) or "bn" (trained from scratch)
    trainable_layers: int = 3  # resnets: stages trained from the top (torchvision's default 3)
    fpn_channels: int = 256
    nano_channels: tuple[int, ...] = (32, 64, 96, 128)  # nano: stem, stride 4, 8, 16
    # box head
    roi_output_size: int = 7
    roi_sampling_ratio: int = 2
    representation_size: int = 1024
    # RPN
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7  # at test time: what the deployed model (and export) uses
    rpn_nms_thresh_train: float | None = None  # while training; None = rpn_nms_thresh
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_score_thresh: float = 0.0
    # RoI heads
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    # notes that travel with the weights, ignored by build_model: {"sharpen": True} when the
    # model was trained on PIL-sharpened inputs (export writes it into model.json, and the
    # reader then sharpens too: runtime.preprocess.sharpened)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.canvas = tuple(int(v) for v in self.canvas)
        self.anchor_sizes = tuple(tuple(int(s) for s in level) for level in self.anchor_sizes)
        self.aspect_ratios = tuple(tuple(float(r) for r in level) for level in self.aspect_ratios)
        self.image_mean = tuple(float(v) for v in self.image_mean)
        self.image_std = tuple(float(v) for v in self.image_std)
        self.nano_channels = tuple(int(v) for v in self.nano_channels)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"model config: unknown field(s) {', '.join(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def levels(self) -> int:
        """FPN output levels: the body's returned stages plus the max-pool level."""
        return 4 if self.backbone == "nano" else 5

    def validate(self) -> None:
        if self.backbone not in BACKBONES:
            raise UserError(
                f"unknown backbone {self.backbone!r}; choose from {', '.join(BACKBONES)}"
            )
        h, w = self.canvas
        if h <= 0 or w <= 0 or h % 32 or w % 32:
            raise UserError(f"canvas must be two positive multiples of 32, got {h}x{w}")
        if len(self.anchor_sizes) != self.levels or len(self.aspect_ratios) != self.levels:
            raise UserError(
                f"{self.backbone}: needs {self.levels} anchor levels (one per FPN level), got "
                f"{len(self.anchor_sizes)} sizes and {len(self.aspect_ratios)} ratio sets"
            )
        per_level = zip(self.anchor_sizes, self.aspect_ratios, strict=True)
        if len({len(s) * len(r) for s, r in per_level}) != 1:
            raise UserError("every FPN level needs the same number of anchors (shared RPN head)")
        if self.norm not in ("frozen_bn", "bn"):
            raise UserError(f"norm must be 'frozen_bn' or 'bn', got {self.norm!r}")
        if self.num_classes != 11:
            raise UserError(
                f"num_classes must be 11 (background + 10 digits), got {self.num_classes}"
            )


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
