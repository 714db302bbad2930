"""What digit-read does when the engine fails at run time: the batch is lost and named, nothing
the engine prints reaches the CSV, and nothing claims a provider that is not running.

ONNX Runtime's own Python layer runs here (its InferenceSession.run, with its EPFail fallback);
only its C++ session is wrapped so that the first run raises EPFail, as a CUDA provider does on,
say, an illegal memory access.
"""

import re

import pytest
from click.testing import CliRunner
from onnxruntime.capi import onnxruntime_pybind11_state as C

from digit_reader.runtime import ort_backend
from digit_reader.runtime.cli import main

pytestmark = pytest.mark.slow
ROW = re.compile(r"^\d+,(-1|\d+)$")


class FailsOnce:
    """ORT's C++ session, whose first run fails in its execution provider."""

    def __init__(self, sess):
        self.sess, self.failed = sess, False

    def run(self, *args, **kwargs):
        if not self.failed:
            self.failed = True
            raise C.EPFail("CUDA failure 700: an illegal memory access was encountered")
        return self.sess.run(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.sess, name)


@pytest.fixture
def first_run_fails(monkeypatch):
    real = ort_backend._session

    def session(*args, **kwargs):
        s = real(*args, **kwargs)
        s._sess = FailsOnce(s._sess)
        return s

    monkeypatch.setattr(ort_backend, "_session", session)


def test_a_provider_failure_costs_its_batch_and_prints_nothing_into_the_csv(
    export_dir, synth_root, first_run_fails
):
    images = sorted((synth_root / "test").glob("*.png"), key=lambda p: int(p.stem))
    args = [str(synth_root / "test"), "--model", str(export_dir), "--batch-size", "8"]
    result = CliRunner().invoke(main, args)
    lines = result.stdout.splitlines()
    assert lines[0] == "image_id,pred_label"
    assert all(ROW.match(line) for line in lines[1:]), lines  # no "EP Error", no "Falling back"
    assert len(lines) == 1 + len(images) - 8  # the first batch is lost, the rest is read
    assert result.exit_code == 1
    failed = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(failed) == 8 and all(
        "onnxruntime (CPUExecutionProvider) failed" in f for f in failed
    )
    assert all("EPFail" in f and "illegal memory access" in f for f in failed)
    assert {f.split(":")[1].strip() for f in failed} == {str(p) for p in images[:8]}
    assert f"{len(images) - 8} read, 8 failed" in result.stderr


def test_the_backend_never_names_a_provider_that_is_not_running(export_dir, first_run_fails):
    from digit_reader.runtime.contract import Backend
    from digit_reader.runtime.errors import BackendError
    from digit_reader.runtime.ort_backend import OrtBackend

    backend = OrtBackend(export_dir / "model.onnx", "auto")
    assert isinstance(backend, Backend)
    assert backend.name == f"onnxruntime ({backend.session.get_providers()[0]})"
    with pytest.raises(BackendError):
        backend(__import__("numpy").zeros((1, 3, 64, 128), "uint8"))
    assert backend.session.get_providers() == backend.providers  # no silent switch
