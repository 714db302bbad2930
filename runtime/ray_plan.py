"""How many model actors `digit-read --ray` starts, and the CPUs (and GPUs) each asks Ray for.

Ray Data starts the actor pool first; if the actors hold every CPU a read task waits forever
(ray-project/ray#44687). So actors get fractional CPUs such that on every node READ_CPUS stay
free for read tasks, and each actor runs as many engine threads as the CPU share Ray granted it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from digit_reader.runtime.errors import UserError

READ_CPUS = 0.25  # what a read task asks for, and what the actors must leave free on each node


@dataclass(frozen=True)
class Plan:
    actors: int
    num_cpus: float  # per actor
    num_gpus: float  # per actor (0: CPU actors)

    @property
    def threads(self) -> int:
        return engine_threads(self.num_cpus)


def plan(node_cpus: list[float], gpus: float, actors: int | None, device: str) -> Plan:
    """How many model actors, and the CPUs (and GPUs) each asks Ray for.

    Default count: one actor per 2 CPUs of the cluster, or one per GPU with device cuda.
    The rule that keeps every job able to progress: on each node the actors placed there leave
    READ_CPUS free, so a read task always fits; i.e. the largest share c (in hundredths) with
    sum over nodes of floor((cpus - READ_CPUS) / c) >= actors. A cuda actor asks for at most
    one CPU. Raises UserError when the actors cannot fit at all.
    """
    cpus = [c for c in node_cpus if c > 0]
    total = sum(cpus)
    if device == "cuda":
        if not gpus:
            raise UserError("--device cuda: the Ray cluster has no GPU", code=2)
        n = actors or max(1, int(gpus))
        num_gpus = 1.0 if gpus >= n else math.floor(gpus / n * 100) / 100
    else:
        n = actors or max(1, int(total // 2))
        num_gpus = 0.0
    free = [f for c in cpus if (f := round((c - READ_CPUS) * 100)) > 0]  # hundredths of a CPU
    best = 0
    for f in free:
        for k in range(1, n + 1):
            share = f // k
            if share > best and sum(g // share for g in free) >= n:
                best = share
    if best < 5:  # 0.05 CPU: less is no actor at all
        raise UserError(
            f"--actors {n}: too many for {total:g} CPUs ({READ_CPUS} per node stay free for "
            "Ray Data's read tasks)",
            code=2,
        )
    num_cpus = best / 100
    if device == "cuda":
        num_cpus = min(num_cpus, 1.0)
    return Plan(n, num_cpus, num_gpus)


def engine_threads(cpus: float) -> int:
    """ONNX Runtime's or OpenVINO's threads for a CPU share Ray granted: 0.5 -> 1, 0.87 -> 1,
    1.75 -> 2."""
    return max(1, int(cpus + 0.5))


def block_count(n: int, batch_size: int, actors: int) -> int:
    """Ray Data blocks of the input list: a few batches each (a retry redoes one block), but
    at least two per actor while there are batches enough to share."""
    batches = math.ceil(n / batch_size)
    return max(1, min(batches, max(math.ceil(batches / 4), 2 * actors)))
