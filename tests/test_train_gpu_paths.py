"""Training decisions that matter on CUDA, exercised on the CPU where they can be.

CPU AMP (GradScaler("cpu")) stands in for CUDA AMP: it has the same state dict and the same
skipped-step behaviour. What only CUDA shows is in the `gpu` test at the end and in
`make gpu-check` (train with AMP, resume, export).
"""

import warnings

import pytest
import torch

from digit_reader.train import distributed, engine, run_state
from digit_reader.train.dataset import ignore_sigint, loader_options


def test_a_checkpoint_without_amp_resumes_with_a_fresh_scaler():
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    with pytest.raises(RuntimeError, match="source state dict is empty"):
        torch.amp.GradScaler("cpu", enabled=True).load_state_dict({})  # what used to happen
    note = run_state.restore_scaler(scaler, torch.amp.GradScaler("cpu", enabled=False).state_dict())
    assert "fresh gradient scaler" in note
    assert scaler.get_scale() == 65536.0  # a new scaler's scale
    saved = torch.amp.GradScaler("cpu", enabled=True, init_scale=128.0).state_dict()
    assert run_state.restore_scaler(scaler, saved) is None and scaler.get_scale() == 128.0
    disabled = torch.amp.GradScaler("cpu", enabled=False)  # a CUDA checkpoint resumed on a CPU
    assert run_state.restore_scaler(disabled, saved) is None


def test_a_skipped_amp_step_does_not_warn_about_the_scheduler_and_still_advances_it():
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    t = run_state.Training(model, model, optimizer, scheduler, scaler, 1, 1, True)
    loss = model(torch.tensor([[float("inf"), 1.0]])).sum()  # inf gradients: the step is skipped
    before = model.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        lr = engine.optimizer_step(t, loss, grad_clip=None)
    assert torch.equal(model.weight, before)  # skipped
    assert lr == 0.1 and optimizer.param_groups[0]["lr"] == 0.05  # the schedule moved on
    assert scaler.get_scale() < 65536.0


def test_every_torchrun_rank_uses_its_local_rank_gpu():
    rank1 = distributed.DistInfo(rank=1, world=2, local_rank=1)
    assert distributed.device_for("cuda", rank1) == torch.device("cuda", 1)
    assert distributed.device_for("cuda:0", rank1) == torch.device("cuda", 1)
    assert distributed.device_for("cuda:3", distributed.DistInfo()) == torch.device("cuda", 3)
    assert distributed.device_for("cpu", rank1) == torch.device("cpu")


def test_loaders_pin_memory_on_cuda_and_leave_ctrl_c_to_the_trainer():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert loader_options(None, cuda) == {
        "num_workers": 4,
        "pin_memory": True,
        "worker_init_fn": ignore_sigint,
    }
    assert loader_options(None, cpu) == {"num_workers": 0, "pin_memory": False}
    assert loader_options(2, cpu)["worker_init_fn"] is ignore_sigint


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_validation_of_an_amp_model_runs_in_fp32(synth_root):
    """CUDA only: on the CPU autocast was never on. An AMP-trained config must evaluate the
    same boxes as with AMP off, i.e. in fp32 (fp16 box decoding at 1344 px has 1-px steps)."""
    from digit_reader.train import evaluate, presets
    from digit_reader.train.data.hw2 import load_split
    from digit_reader.train.model import build_model

    mcfg, tcfg = presets.preset("nano")
    model = build_model(mcfg).cuda().eval()
    samples = load_split(synth_root, "valid")
    device = torch.device("cuda")
    tcfg.amp = True
    with_amp = evaluate.predict(model, samples, mcfg.canvas, tcfg, device)
    tcfg.amp = False
    without = evaluate.predict(model, samples, mcfg.canvas, tcfg, device)
    for a, b in zip(with_amp, without, strict=True):
        assert a.boxes.dtype == b.boxes.dtype
        assert (a.boxes == b.boxes).all() and (a.scores == b.scores).all()
