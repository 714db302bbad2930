"""The deployable graph: the eager torchvision Faster R-CNN's inference, with static shapes.

`DeployableDetector` shares its weights with the eager model (backbone + FPN, RPN head, box
head, box predictor) and re-states torchvision's inference path step by step, in the same
order and with the same arithmetic, so that it computes the same function on the same canvas:

    normalise -> backbone/FPN -> RPN head -> per-level top-n -> decode -> clip -> small-box
    and score filters -> NMS per level -> post-NMS top-n -> multi-scale RoIAlign -> box head
    -> decode -> softmax -> clip -> score and small-box filters -> NMS per class -> top-K

Where torchvision removes candidates with boolean indexing (data-dependent shapes), this graph
keeps them and marks them removed with the score -1 (`nms.REMOVED`): every tensor has a shape
fixed by the canvas and the config, except the batch size. Anchors are generated for the
selected indices only, from integer grid positions, exactly as torchvision's AnchorGenerator
computes them (no multi-megabyte anchor constant in the file).

Input `images` uint8 [N, 3, H, W] (runtime.preprocess's canvas). Outputs, K = the config's
detections per image: num_dets int32 [N]; boxes float32 [N, K, 4] (x1 y1 x2 y2, canvas
pixels); scores float32 [N, K]; labels int32 [N, K] (digits 0-9); sorted by score, padded
after num_dets with zero boxes, score 0 and label -1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.ops import roi_align

from digit_reader.export.nms import REMOVED, nms_keep
from digit_reader.train.config import ModelConfig

# torchvision's fixed settings (models/detection/rpn.py, roi_heads.py, _utils.BoxCoder)
RPN_MIN_SIZE = 1e-3
BOX_MIN_SIZE = 1e-2
RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
BOX_XFORM_CLIP = math.log(1000.0 / 16)
# torchvision's LevelMapper (ops/poolers.py): the FPN paper's Eqn. (1)
CANONICAL_SCALE, CANONICAL_LEVEL, LEVEL_EPS = 224, 4, 1e-6


def decode_boxes(deltas: torch.Tensor, anchors: torch.Tensor, weights) -> torch.Tensor:
    """torchvision BoxCoder.decode_single on [..., 4] deltas against [..., 4] reference boxes."""
    widths = anchors[..., 2] - anchors[..., 0]
    heights = anchors[..., 3] - anchors[..., 1]
    ctr_x = anchors[..., 0] + 0.5 * widths
    ctr_y = anchors[..., 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = torch.clamp(deltas[..., 2] / ww, max=BOX_XFORM_CLIP)
    dh = torch.clamp(deltas[..., 3] / wh, max=BOX_XFORM_CLIP)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    pred_w = torch.exp(dw) * widths
    pred_h = torch.exp(dh) * heights
    c_to_c_w = 0.5 * pred_w
    c_to_c_h = 0.5 * pred_h
    return torch.stack(
        (
            pred_ctr_x - c_to_c_w,
            pred_ctr_y - c_to_c_h,
            pred_ctr_x + c_to_c_w,
            pred_ctr_y + c_to_c_h,
        ),
        dim=-1,
    )


def clip_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def big_enough(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """torchvision's remove_small_boxes as a mask."""
    return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & (
        (boxes[..., 3] - boxes[..., 1]) >= min_size
    )


class DeployableDetector(nn.Module):
    def __init__(self, model: FasterRCNN, cfg: ModelConfig):
        super().__init__()
        if model.training:
            raise ValueError("export the model in eval mode: the graph is its inference function")
        self.cfg = cfg
        self.canvas = tuple(cfg.canvas)
        self.backbone = model.backbone
        self.rpn_head = model.rpn.head
        self.box_head = model.roi_heads.box_head
        self.box_predictor = model.roi_heads.box_predictor
        self._copy_settings(model.rpn, model.roi_heads)
        self.register_buffer("mean", torch.tensor(cfg.image_mean).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(cfg.image_std).view(1, 3, 1, 1), False)
        self._set_up_levels(model.rpn)
        self._set_up_pooling()
        self.num_classes = self.box_predictor.cls_score.out_features
        self.top_k = min(self.detections_per_img, self.post_top_n * (self.num_classes - 1))

    def _copy_settings(self, rpn, heads) -> None:
        """The eager model's inference settings (its "testing" top-n, thresholds, RoI pooler),
        read once as plain numbers so the graph bakes them in as constants."""
        self.rpn_pre_nms_top_n = rpn._pre_nms_top_n["testing"]
        self.rpn_post_nms_top_n = rpn._post_nms_top_n["testing"]
        self.rpn_nms_thresh = float(rpn.nms_thresh)
        self.rpn_score_thresh = float(rpn.score_thresh)
        self.box_score_thresh = float(heads.score_thresh)
        self.box_nms_thresh = float(heads.nms_thresh)
        self.detections_per_img = int(heads.detections_per_img)
        pooler = heads.box_roi_pool
        self.pooled_names = list(pooler.featmap_names)
        self.roi_output_size = tuple(pooler.output_size)
        self.roi_sampling_ratio = int(pooler.sampling_ratio)

    def _set_up_levels(self, rpn) -> None:
        """Each FPN level's grid, stride, cell anchors (buffers cell_anchors_0..) and static
        top-n: the canvas is fixed, so one zero image through the backbone gives them all."""
        h, w = self.canvas
        with torch.no_grad():
            feats = self.backbone(torch.zeros(1, 3, h, w))
        self.level_names = list(feats)
        self.grids = [tuple(f.shape[-2:]) for f in feats.values()]
        self.strides = [(h // gh, w // gw) for gh, gw in self.grids]
        for i, cell in enumerate(rpn.anchor_generator.cell_anchors):
            self.register_buffer(f"cell_anchors_{i}", cell.float().clone(), False)
        self.anchors_per_location = rpn.anchor_generator.num_anchors_per_location()
        self.num_anchors = [
            gh * gw * a for (gh, gw), a in zip(self.grids, self.anchors_per_location, strict=True)
        ]
        # TopK sizes are static: never more than the level holds (e.g. P6 of a small canvas).
        self.level_top_n = [min(self.rpn_pre_nms_top_n, n) for n in self.num_anchors]
        self.post_top_n = min(
            self.rpn_post_nms_top_n, len(self.level_top_n) * max(self.level_top_n)
        )

    def _set_up_pooling(self) -> None:
        """pool()'s static plan: the pooled levels' scales (buffer pool_scales), the levels a
        RoI inside the canvas can reach, and the tile map (buffer pool_offsets, or None)."""
        h, w = self.canvas
        # Pooled levels and their scales, as torchvision's MultiScaleRoIAlign infers them.
        scales = [
            2.0 ** round(math.log2(self.grids[self.level_names.index(n)][0] / h))
            for n in self.pooled_names
        ]
        self.roi_scales = scales
        self.k_min = int(-math.log2(scales[0]))
        self.k_max = int(-math.log2(scales[-1]))
        self.pooled_grids = [self.grids[self.level_names.index(n)] for n in self.pooled_names]
        self.register_buffer("pool_scales", torch.tensor(scales), False)
        # Levels a RoI inside the canvas can map to (nano's 64x128 canvas: the first only).
        biggest = math.sqrt(h * w) * (1 + 1e-6)
        top = math.floor(CANONICAL_LEVEL + math.log2(biggest / CANONICAL_SCALE) + LEVEL_EPS)
        self.pool_levels = min(max(top, self.k_min), self.k_max) - self.k_min + 1
        # pool(): a coarser level (k > k_min) is sampled past its last column only by a RoI
        # under one cell (2**k px) on one side and over 196 * 2**k px on the other (to map to
        # level k), i.e. on a canvas side of at least 196 * 2**(k_min + 1) px (1568 for P2-P5).
        limit = (CANONICAL_SCALE * 2.0 ** (self.k_min + 1 - CANONICAL_LEVEL)) ** 2
        self.exact_limit = 0.999 * limit / 2.0 ** (self.k_min + 1)
        self.pool_tiles = self.tile_layout()

    def tile_layout(self) -> tuple[int, int] | None:
        """pool()'s map: (column width, height), with each level's offset in `pool_offsets`;
        None where one level is reachable, the tiles would not fit beside the first level, or
        the canvas is past `exact_limit` (pool() then pools every reachable level)."""
        coarse = self.pooled_grids[1 : self.pool_levels]
        first_h, _ = self.pooled_grids[0]
        height = sum(gh + 1 for gh, _ in coarse)
        if not coarse or height > first_h or max(self.canvas) >= self.exact_limit:
            return None
        width = max(gw + 1 for _, gw in coarse)
        offsets, y = [(width, 0)], 0
        for gh, _ in coarse:
            offsets.append((0, y))
            y += gh + 1
        table = torch.tensor([(x, y, x, y) for x, y in offsets], dtype=torch.float32)
        self.register_buffer("pool_offsets", table, False)
        return width, first_h

    def anchors_at(self, level: int, idx: torch.Tensor) -> torch.Tensor:
        """Anchors of flat indices `idx` (location-major, anchor-minor) of one level."""
        a = self.anchors_per_location[level]
        _, gw = self.grids[level]
        sh, sw = self.strides[level]
        loc = torch.div(idx, a, rounding_mode="floor")
        cell = getattr(self, f"cell_anchors_{level}")[idx % a]
        sx = ((loc % gw) * sw).to(torch.int32)
        sy = (torch.div(loc, gw, rounding_mode="floor") * sh).to(torch.int32)
        shift = torch.stack((sx, sy, sx, sy), dim=-1)
        return shift + cell

    def proposals(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """RPN: (boxes [N, P, 4], scores [N, P]) with REMOVED scores where eager keeps fewer."""
        h, w = self.canvas
        objectness, deltas = self.rpn_head(features)
        k_max = max(self.level_top_n)
        boxes_l, scores_l = [], []
        for level, (obj, dlt) in enumerate(zip(objectness, deltas, strict=True)):
            n = obj.shape[0]
            obj = obj.permute(0, 2, 3, 1).reshape(n, -1)
            dlt = dlt.view(n, -1, 4, *dlt.shape[-2:]).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
            top, idx = obj.topk(self.level_top_n[level], dim=1)
            dlt = torch.gather(dlt, 1, idx.unsqueeze(-1).expand(-1, -1, 4))
            boxes = decode_boxes(dlt, self.anchors_at(level, idx), RPN_BOX_WEIGHTS)
            boxes = clip_boxes(boxes, h, w)
            prob = torch.sigmoid(top)
            live = big_enough(boxes, RPN_MIN_SIZE) & (prob >= self.rpn_score_thresh)
            prob = torch.where(live, prob, torch.full_like(prob, REMOVED))
            pad = k_max - self.level_top_n[level]
            if pad:
                boxes = F.pad(boxes, (0, 0, 0, pad))
                prob = F.pad(prob, (0, pad), value=REMOVED)
            boxes_l.append(boxes)
            scores_l.append(prob)
        boxes = torch.stack(boxes_l, 1)  # [N, L, k, 4]: one NMS problem per image and level
        scores = torch.stack(scores_l, 1)
        n, levels = boxes.shape[:2]
        keep = nms_keep(boxes.reshape(-1, k_max, 4), scores.reshape(-1, k_max), self.rpn_nms_thresh)
        scores = torch.where(
            keep.view(n, levels, k_max) > 0, scores, torch.full_like(scores, REMOVED)
        )
        top, idx = scores.reshape(n, -1).topk(self.post_top_n, dim=1)
        boxes = torch.gather(boxes.reshape(n, -1, 4), 1, idx.unsqueeze(-1).expand(-1, -1, 4))
        return boxes, top

    def roi_levels(self, boxes: torch.Tensor) -> torch.Tensor:
        """Each RoI's pooled level (0 = the first pooled name): torchvision's LevelMapper."""
        area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
        s = torch.sqrt(area).reshape(-1)
        lvl = torch.floor(
            CANONICAL_LEVEL + torch.log2(s / CANONICAL_SCALE) + torch.tensor(LEVEL_EPS)
        )
        return torch.clamp(lvl, min=self.k_min, max=self.k_max).to(torch.int64) - self.k_min

    def pool(self, features: dict, boxes: torch.Tensor) -> torch.Tensor:
        """MultiScaleRoIAlign as one RoiAlign: each RoI pooled on its own level only.

        Why: pooling every RoI on every level and keeping one (`pool_every_level`) does the
        RoiAlign work once per level; at 800x1344 that was 38 % of the int8 model call. Here
        the levels are tiled into one map (`pool_tiles`): the coarser ones in a column on the
        left, each with its last row and column repeated, the first level on the right, so its
        right and bottom edges are the map's. Each RoI is scaled to its level (a power of two)
        and moved to its tile. RoiAlign clamps a sample in [w-1, w] to column w-1, which the
        repeated column reproduces, and below `exact_limit` no sample of a coarser level lies
        past w; moving a RoI rounds its coordinates to the float32 step at the tile's offset
        (about 3e-5 of a cell at 800x1344).
        """
        if self.pool_tiles is None:  # one level (one plain RoiAlign, bit for bit), or no exact map
            return self.pool_every_level(features, boxes, self.pool_levels)
        first = self.pooled_names[0]
        lvl = self.roi_levels(boxes)
        n, p = boxes.shape[:2]
        width, height = self.pool_tiles
        column = []
        for name in self.pooled_names[1 : self.pool_levels]:
            f = features[name]
            f = torch.cat((f, f[:, :, :, -1:]), 3)
            f = torch.cat((f, f[:, :, -1:]), 2)
            column.append(F.pad(f, (0, width - f.shape[3])) if f.shape[3] < width else f)
        column = torch.cat(column, 2)
        if column.shape[2] < height:
            column = F.pad(column, (0, 0, 0, height - column.shape[2]))
        grid = torch.cat((column, features[first]), 3)  # [N, C, H, width + W]
        image = torch.arange(n, device=boxes.device, dtype=boxes.dtype).repeat_interleave(p)
        moved = boxes.reshape(-1, 4) * self.pool_scales[lvl].unsqueeze(-1) + self.pool_offsets[lvl]
        rois = torch.cat((image[:, None], moved), dim=1)
        out = self.roi_output_size
        return roi_align(grid, rois, out, 1.0, self.roi_sampling_ratio, aligned=False)

    def pool_every_level(
        self, features: dict, boxes: torch.Tensor, levels: int | None = None
    ) -> torch.Tensor:
        """MultiScaleRoIAlign: every RoI pooled on every level (the first `levels` only: those
        a RoI can reach), each keeps its mapped level's."""
        n, p = boxes.shape[:2]
        lvl = self.roi_levels(boxes)
        batch = torch.arange(n, device=boxes.device, dtype=boxes.dtype).repeat_interleave(p)
        rois = torch.cat((batch[:, None], boxes.reshape(-1, 4)), dim=1)
        out = None
        pairs = list(zip(self.pooled_names, self.roi_scales, strict=True))[:levels]
        for level, (name, scale) in enumerate(pairs):
            pooled = roi_align(
                features[name],
                rois,
                self.roi_output_size,
                scale,
                self.roi_sampling_ratio,
                aligned=False,
            )
            out = (
                pooled
                if out is None
                else torch.where((lvl == level).view(-1, 1, 1, 1), pooled, out)
            )
        return out

    def forward(self, images: torch.Tensor):
        h, w = self.canvas
        x = (images.float() / 255.0 - self.mean) / self.std
        features = self.backbone(x)
        proposals, proposal_scores = self.proposals(list(features.values()))
        n, p = proposals.shape[:2]
        pooled = self.pool(features, proposals)
        class_logits, box_regression = self.box_predictor(self.box_head(pooled))
        c = self.num_classes
        ref = proposals.reshape(-1, 1, 4).expand(-1, c, 4)
        boxes = decode_boxes(box_regression.reshape(-1, c, 4), ref, BOX_WEIGHTS)
        boxes = clip_boxes(boxes, h, w)[:, 1:].reshape(n, p, c - 1, 4)
        scores = F.softmax(class_logits, -1)[:, 1:].reshape(n, p, c - 1)
        live = (scores > self.box_score_thresh) & big_enough(boxes, BOX_MIN_SIZE)
        live = live & (proposal_scores > REMOVED).unsqueeze(-1)
        scores = torch.where(live, scores, torch.full_like(scores, REMOVED))
        # one NMS problem per image and class, as torchvision's batched_nms over labels
        per_class_boxes = boxes.permute(0, 2, 1, 3).reshape(-1, p, 4)
        per_class_scores = scores.permute(0, 2, 1).reshape(-1, p)
        keep = nms_keep(per_class_boxes, per_class_scores, self.box_nms_thresh)
        keep = keep.view(n, c - 1, p).permute(0, 2, 1)
        scores = torch.where(keep > 0, scores, torch.full_like(scores, REMOVED)).reshape(n, -1)
        top, idx = scores.topk(self.top_k, dim=1)
        found = top > REMOVED
        num_dets = found.sum(dim=1).to(torch.int32)
        boxes = torch.gather(boxes.reshape(n, -1, 4), 1, idx.unsqueeze(-1).expand(-1, -1, 4))
        boxes = torch.where(found.unsqueeze(-1), boxes, torch.zeros_like(boxes))
        scores = torch.where(found, top, torch.zeros_like(top))
        labels = torch.where(found, idx % (c - 1), torch.full_like(idx, -1)).to(torch.int32)
        return num_dets, boxes, scores, labels
