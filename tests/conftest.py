"""Session fixtures: one small synthetic data set, one nano model trained until it reads digits
(about 45 s on 2 cores), and its export (fp32 + fp16 ONNX, parity-gated) made by `digit-export`.

The model is deliberately half-trained: it finds digits (mAP50 ~0.4) with many scores near the
0.5 threshold, which is where exported graphs and decoding are most likely to disagree.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    from digit_reader.train.data.synth import synthesize

    root = tmp_path_factory.mktemp("svhn-like")
    synthesize(root, {"train": 320, "valid": 24, "test": 12}, seed=5)
    return root


@pytest.fixture(scope="session")
def nano_run(synth_root, tmp_path_factory) -> Path:
    from digit_reader.train import engine, presets

    mcfg, tcfg = presets.preset("nano")
    tcfg.epochs = 6  # 240 steps
    run = tmp_path_factory.mktemp("runs") / "nano"
    spec = engine.RunSpec(run, synth_root, mcfg, tcfg, preset="nano", device="cpu")
    engine.train(spec, progress=False)
    return run


@pytest.fixture(scope="session")
def export_result(nano_run):
    """(export dir, CliRunner result) of `digit-export RUN --fp16` with default options."""
    from digit_reader.export.cli import main

    result = CliRunner().invoke(main, [str(nano_run), "--fp16"])
    assert result.exit_code == 0, result.output
    return nano_run / "export", result


@pytest.fixture(scope="session")
def export_dir(export_result) -> Path:
    return export_result[0]
