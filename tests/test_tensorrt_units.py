"""The TensorRT engine builder's decisions, tested without TensorRT (which cannot run here)."""

import enum

import pytest

from digit_reader.export.tensorrt_engine import (
    BatchProfile,
    network_flags,
    parser_errors,
    why_no_engine,
)
from digit_reader.runtime.errors import UserError


def test_engine_is_skipped_with_the_reason():
    assert "not installed" in why_no_engine(None, None)
    assert "too old" in why_no_engine("8.6.1", 1)
    assert "cuda-python" in why_no_engine("10.13.0", None)
    assert why_no_engine("10.13.0", 0) == "no NVIDIA GPU is visible"
    assert why_no_engine("10.13.0", 2) is None
    assert why_no_engine("11.0.0", 1) is None


def test_network_is_strongly_typed_where_tensorrt_has_the_flag():
    class TRT10(enum.IntEnum):
        EXPLICIT_BATCH = 0
        STRONGLY_TYPED = 1
        PREFER_AOT_PYTHON_PLUGINS = 2

    class TRT11(enum.IntEnum):  # strongly typed always; the member may be gone
        PREFER_AOT_PYTHON_PLUGINS = 2

    assert network_flags(TRT10) == 1 << 1  # and never EXPLICIT_BATCH (ignored since 10)
    assert network_flags(TRT11) == 0


def test_batch_profile_shapes_and_validation():
    assert BatchProfile(1, 8, 32).shapes((800, 1344)) == (
        (1, 3, 800, 1344),
        (8, 3, 800, 1344),
        (32, 3, 800, 1344),
    )
    with pytest.raises(UserError, match="min <= opt <= max") as e:
        BatchProfile(4, 2, 8).validate()
    assert e.value.code == 2


def test_parser_errors_name_the_node():
    class Error:
        def __init__(self, i):
            self.i = i

        def node(self):
            return self.i

        def node_operator(self):
            return "RoiAlign"

        def node_name(self):
            return f"node_roi_align_{self.i}"

        def desc(self):
            return "Plugin not found"

    class Parser:
        num_errors = 2

        def get_error(self, i):
            return Error(i)

    text = parser_errors(Parser())
    assert text.splitlines() == [
        "  node 0 (RoiAlign 'node_roi_align_0'): Plugin not found",
        "  node 1 (RoiAlign 'node_roi_align_1'): Plugin not found",
    ]
