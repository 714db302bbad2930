"""HW2 samples as model inputs: augment (train only), letterbox to the canvas, boxes to match.

Every image goes through runtime.preprocess (open_rgb, letterbox, boxes_to_canvas), the
contract the exported model and the reader use, so training sees what deployment sees.
Augmentation randomness depends only on (seed, epoch, index): a resumed or distributed run
draws exactly what an uninterrupted single-process run would.
"""

from __future__ import annotations

import math
import signal

import numpy as np
import torch
from torch.utils.data import Dataset

from digit_reader.runtime.contract import category_of
from digit_reader.runtime.preprocess import boxes_to_canvas, letterbox, open_rgb, sharpened
from digit_reader.train import transforms
from digit_reader.train.data.hw2 import Sample


class DigitDataset(Dataset):
    """Items are keyed (index, epoch); returns (uint8 CHW canvas, target, meta).

    meta = {index, scale (letterbox), size (original w, h)}: what maps boxes back to the image.
    """

    def __init__(
        self,
        samples: list[Sample],
        canvas: tuple[int, int],
        tcfg,
        train: bool,
        sharpen: bool = False,
    ):
        """`sharpen`: the model's (ModelConfig.sharpen), part of its preprocessing contract."""
        self.samples = samples
        self.canvas = tuple(canvas)
        self.tcfg = tcfg
        self.train = train
        self.sharpen = sharpen

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        s = self.samples[index]
        rgb = open_rgb(s.path)
        size = (rgb.shape[1], rgb.shape[0])
        if self.sharpen:
            rgb = sharpened(rgb)
        boxes = s.boxes
        if self.train and self.tcfg.augment:
            rng = np.random.default_rng([self.tcfg.seed, epoch, index])
            c = self.tcfg
            rgb, boxes = transforms.reframe(rgb, boxes, rng, c.zoom, c.aspect_jitter, c.shift)
            rgb = transforms.photometric(rgb, rng, c.photometric)
        canvas, scale = letterbox(rgb, self.canvas)
        target = {
            "boxes": torch.from_numpy(boxes_to_canvas(boxes, scale)).reshape(-1, 4),
            "labels": torch.from_numpy(category_of(s.digits)),
        }
        image = torch.from_numpy(np.ascontiguousarray(canvas.transpose(2, 0, 1)))
        return image, target, {"index": index, "scale": scale, "size": size}


def collate(batch):
    images, targets, metas = zip(*batch, strict=True)
    return torch.stack(images), list(targets), list(metas)


def ignore_sigint(worker_id: int) -> None:
    """DataLoader worker_init_fn: Ctrl-C is the main process's to handle (engine.StopFlag).
    A module-level function, so spawn-started workers can pickle it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def loader_options(workers: int | None, device: torch.device) -> dict:
    """DataLoader settings shared by training and evaluation: worker processes (default 4 on
    CUDA, none on the CPU, where they would compete with the model for the cores), pinned
    memory on CUDA for asynchronous copies, and workers that leave Ctrl-C to the trainer."""
    cuda = device.type == "cuda"
    n = workers if workers is not None else (4 if cuda else 0)
    options = {"num_workers": n, "pin_memory": cuda}
    if n:
        options["worker_init_fn"] = ignore_sigint
    return options


def to_model_input(images: torch.Tensor, device) -> list[torch.Tensor]:
    """uint8 NCHW -> the list of float [0, 1] CHW tensors torchvision's detectors take."""
    x = images.to(device, non_blocking=True).float().div_(255.0)
    return list(x.unbind(0))


def epoch_batches(
    n: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1, shuffle=True
) -> list[list[tuple[int, int]]]:
    """This rank's batches of (index, epoch) keys, as torch's DistributedSampler orders them."""
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(
        range(n), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
    )
    sampler.set_epoch(epoch)
    order = list(sampler)
    return [
        [(i, epoch) for i in order[b * batch_size : (b + 1) * batch_size]]
        for b in range(math.ceil(len(order) / batch_size))
    ]
