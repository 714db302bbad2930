"""TensorRT engines from the exported ONNX graphs, with TensorRT's official Python API.

NOT EXECUTED HERE: the development machines have no NVIDIA GPU and cannot install tensorrt.
The build follows TensorRT's samples/python (common.py, dds_faster_rcnn/build_engine.py) call
by call; every decision that can be made without TensorRT (when to skip, which flags, the
optimisation profile, how parser errors read) is a plain function tested on the CPU.

Precision is carried by the graph: the engine is built as a strongly typed network from
model.onnx (fp32), model.fp16.onnx (fp16 convolutions and matrix products) or model.int8.onnx
(explicit quantization: its QuantizeLinear/DequantizeLinear pairs say which tensors are int8
and at what scale). TensorRT 11 removed BuilderFlag.FP16/INT8, weakly typed networks and the
INT8 calibrator API; TensorRT 10 deprecated them and accepts the same strongly typed build, so
one code path serves all three and no precision flag or calibrator is ever set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from digit_reader.export.defaults import WORKSPACE_GIB
from digit_reader.runtime import atomic
from digit_reader.runtime.contract import INPUT_NAME
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.trt_backend import (
    GPU_EXTRA,
    NO_CUDA_PYTHON,
    NOT_INSTALLED,
    TensorRTProbe,
)


@dataclass
class BatchProfile:
    """The optimisation profile over the batch axis (canvas fixed)."""

    min: int = 1
    opt: int = 8
    max: int = 32

    def validate(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise UserError(
                f"batch profile must satisfy 1 <= min <= opt <= max, got "
                f"{self.min}/{self.opt}/{self.max}",
                code=2,
            )

    def shapes(self, canvas: tuple[int, int]) -> tuple[tuple[int, ...], ...]:
        h, w = canvas
        return tuple((n, 3, h, w) for n in (self.min, self.opt, self.max))


def why_no_engine(found: TensorRTProbe) -> str | None:
    """Why no engine can be built on this machine (one line, with what to install), or None."""
    if found.problem is None:
        return None
    if found.problem in (NOT_INSTALLED, NO_CUDA_PYTHON):  # a package to install, by name
        return f"{found.problem} ({GPU_EXTRA} on an NVIDIA machine)"
    return found.problem


def network_flags(flag_enum) -> int:
    """Creation flags: STRONGLY_TYPED where the enum has it (TensorRT 10; 11 is always strongly
    typed and may drop the member). EXPLICIT_BATCH is ignored since TensorRT 10: never set."""
    flag = getattr(flag_enum, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def parser_errors(parser) -> str:
    """Every OnnxParser error, one per line, with the node it concerns."""
    lines = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        lines.append(f"  node {e.node()} ({e.node_operator()} {e.node_name()!r}): {e.desc()}")
    return "\n".join(lines)


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    canvas: tuple[int, int],
    profile: BatchProfile,
    workspace_gib: float = WORKSPACE_GIB,
    timing_cache: Path | None = None,
    log=print,
) -> None:
    """Parse `onnx_path`, build a strongly typed engine for `profile`, write it atomically."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")  # the importer maps RoiAlign to ROIAlign_TRT
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt.NetworkDefinitionCreationFlag))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise UserError(f"{onnx_path}: TensorRT's ONNX parser failed:\n{parser_errors(parser)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if hasattr(trt.BuilderFlag, "TF32"):  # on by default: fp32 means fp32 (parity gate)
        config.clear_flag(trt.BuilderFlag.TF32)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT_NAME, *profile.shapes(canvas))
    config.add_optimization_profile(opt_profile)
    if timing_cache is not None:
        data = timing_cache.read_bytes() if timing_cache.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(data), False)
    log(f"building {engine_path.name} from {onnx_path.name} (this takes minutes)")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UserError(f"{onnx_path}: TensorRT could not build an engine (see its log above)")
    atomic.write_bytes(engine_path, bytes(plan))
    if timing_cache is not None:
        atomic.write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
