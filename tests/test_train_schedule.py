"""The seed's LR schedule: cosine warm restarts stepped per iteration, restarts at 10k, 30k."""

import math

import pytest
import torch

from digit_reader.train.config import TrainConfig
from digit_reader.train.engine import make_optimizer, make_scheduler


def closed_form(step: int, lr: float = 5e-5, t0: int = 10_000, t_mult: int = 2) -> float:
    t_i, t_cur = t0, step
    while t_cur >= t_i:
        t_cur -= t_i
        t_i *= t_mult
    return lr * (1 + math.cos(math.pi * t_cur / t_i)) / 2


def _lrs(tcfg: TrainConfig, total: int, at: set[int]) -> dict[int, float]:
    model = torch.nn.Linear(2, 2)
    opt = make_optimizer(model, tcfg)
    sched = make_scheduler(opt, tcfg, total)
    out = {}
    for step in range(max(at) + 1):
        if step in at:
            out[step] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    return out


def test_seed_lr_matches_closed_form_around_restarts():
    tcfg = TrainConfig()
    steps = {0, 9_999, 10_000, 29_999, 30_000}
    got = _lrs(tcfg, total=70_000, at=steps)
    for step in sorted(steps):
        assert got[step] == pytest.approx(closed_form(step), rel=1e-9, abs=1e-15), step
    assert got[0] == 5e-5 and got[10_000] == 5e-5 and got[30_000] == 5e-5
    assert got[9_999] < 1e-11 and got[29_999] < 1e-11


def test_nano_warms_up_then_decays_once():
    tcfg = TrainConfig(lr=2e-3, t0=None, warmup_steps=100)
    got = _lrs(tcfg, total=1_000, at={0, 50, 99, 100, 550, 999})
    assert got[0] == pytest.approx(2e-3 / 100)
    assert got[50] == pytest.approx(2e-3 * (0.01 + 0.99 * 50 / 100))  # LinearLR's ramp
    assert got[100] == pytest.approx(2e-3)
    assert got[550] == pytest.approx(1e-3)  # half way down the single cosine
    assert got[999] < 1e-6
