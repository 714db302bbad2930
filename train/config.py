"""The model's and the training's settings as plain data (torch-free: `digit-train --help`,
presets and config.json need no torch).

ModelConfig holds everything needed to rebuild the model's function (train/model.py builds it;
export rebuilds the same function as a static graph); TrainConfig how it is trained. Defaults
are the seed report's final model and settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

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
    # part of the preprocessing contract, not of the network: trained on PIL-sharpened inputs
    # (the report's Table 5), so export writes it into model.json and the reader sharpens too
    # (runtime.preprocess.sharpened); build_model ignores it
    sharpen: bool = False
    # notes that travel with the weights, ignored by build_model (e.g. the stand-in's)
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
        """From config.json or a checkpoint; runs before `sharpen` was a field kept it in
        extra["sharpen"]."""
        d = dict(d)
        extra = dict(d.get("extra") or {})
        if "sharpen" in extra:
            d["sharpen"] = bool(d.get("sharpen")) or bool(extra.pop("sharpen"))
            d["extra"] = extra
        return _from_dict(cls, d, "model config")

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


@dataclass
class TrainConfig:
    """How the model is trained; defaults are the seed report's §2.2/§2.4."""

    epochs: int = 20
    batch_size: int = 8  # per process; the report's text says 8 (its table says 16)
    lr: float = 5e-5
    weight_decay: float = 0.01  # torch's AdamW default; the report names none
    # CosineAnnealingWarmRestarts stepped every iteration; t0=None = one decay over the run
    t0: int | None = 10_000
    t_mult: int = 2
    eta_min: float = 0.0
    warmup_steps: int = 0  # linear warm-up before the cosine schedule (nano only)
    grad_clip: float | None = None  # max gradient norm, None = no clipping
    select: str = "accuracy"  # best checkpoint by valid "accuracy" (the report) or "map"
    # label-true augmentation, applied to the original image before letterboxing
    augment: bool = True
    zoom: tuple[float, float] = (0.8, 1.25)  # frame size / image size (scale jitter)
    aspect_jitter: float = 0.1  # frame width jitter relative to its height
    shift: float = 0.1  # frame offset, as a fraction of the free space (small translation)
    photometric: float = 0.3  # brightness/contrast/saturation strength
    eval_batch_size: int = 8
    workers: int | None = None  # DataLoader workers; None = 0 on CPU, 4 on CUDA
    seed: int = 0
    amp: bool = True  # mixed precision (CUDA only)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """From config.json or a checkpoint; a run from before ModelConfig.sharpen has a
        `sharpen` here too, which its model config also holds (ModelConfig.from_dict)."""
        d = {k: v for k, v in d.items() if k != "sharpen"}
        cfg = _from_dict(cls, d, "train config")
        cfg.zoom = tuple(float(v) for v in cfg.zoom)
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        if self.select not in ("accuracy", "map"):
            raise UserError(f"select must be 'accuracy' or 'map', got {self.select!r}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise UserError(f"lr must be positive, got {self.lr}")
        if self.t0 is not None and self.t0 < 1:
            raise UserError(f"t0 must be a positive step count, got {self.t0}")


def _from_dict(cls, d: dict, what: str):
    """A config from its config.json form; a field this version does not know is an error
    (a run made by another version), not silently dropped."""
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise UserError(f"{what}: unknown field(s) {', '.join(unknown)}")
    return cls(**d)
