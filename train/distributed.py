"""torchrun support: one process per device, rank 0 logs and writes, metrics gathered.

Without torchrun's environment (WORLD_SIZE unset or 1) everything here is a no-op, so the
same loop runs single-process. Backend: NCCL on CUDA, gloo on CPU (what the tests use).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init(device: str) -> DistInfo:
    """Join the torchrun process group if there is one; returns this process's place in it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device.startswith("cuda"):
            # bound to its GPU from the start: NCCL's barrier() needs no guess of the device
            torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
        else:
            dist.init_process_group("gloo")
    return DistInfo(rank=rank, world=world, local_rank=local_rank)


def device_for(device: str, info: DistInfo) -> torch.device:
    """Each process on its own GPU under torchrun: `cuda` and `cuda:N` both mean
    cuda:LOCAL_RANK there (one N for every rank would put them all on one GPU)."""
    if device.startswith("cuda") and info.enabled:
        return torch.device("cuda", info.local_rank)
    return torch.device(device)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def mean_across(values: dict[str, float], info: DistInfo, device) -> dict[str, float]:
    """Average scalar losses over ranks (for logging and the NaN check, so all ranks agree)."""
    if not info.enabled:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, (t / info.world).tolist(), strict=True))


def gather(obj, info: DistInfo) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj, info: DistInfo):
    """Rank 0's `obj` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
