"""OpenVINO backend: the exported graph on the CPU with Intel's OpenVINO runtime, no torch.

It reads the export's files as they are: model.onnx, model.fp16.onnx, model.int8.onnx (the QDQ
graph as written, TensorRT's form: no CPU rewrite is needed here) or the IR `digit-export
--openvino` writes (model.xml + model.bin, model.int8.xml + .bin).

Precision is always explicit. OpenVINO's CPU plugin defaults to bf16 on CPUs with AVX512_BF16
or AMX, which would make "fp32" mean something else on another machine: every model is compiled
with INFERENCE_PRECISION_HINT f32 (fp32, fp16 and int8 files: what is not quantized runs in
fp32), or bf16 when asked for, and the compiled model's hint is checked afterwards. bf16 on a
CPU without it is refused with one line, never silently run as fp32. So is int8 on an x86 CPU
without VNNI: OpenVINO's int8 kernels there multiply with 16-bit intermediates that saturate on
a full-range int8 graph (runtime/cpu_features.py), and read other numbers (92 % of the demo's
images as eager on an AVX2 CPU); ONNX Runtime runs the same file exactly there.

Throughput: with PERFORMANCE_HINT THROUGHPUT (bulk reading, batches > 1) OpenVINO splits the
cores into streams; each stream runs one infer request, so a batch is split across the
requests OpenVINO asks for and run on them at once. Batch 1 is LATENCY: one stream, every core.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np

from digit_reader.runtime.console import err
from digit_reader.runtime.contract import INPUT_NAME, OUTPUT_NAMES
from digit_reader.runtime.cpu_features import int8_saturates
from digit_reader.runtime.errors import BackendError, UserError, one_line

OPENVINO_EXTRA = "pip install 'digit-reader[openvino]'"
# the reader's precision -> OpenVINO's inference precision hint
HINTS = {"fp32": "f32", "fp16": "f32", "int8": "f32", "bf16": "bf16"}
DEVICE = "CPU"
SATURATES = (
    "OpenVINO int8 on a CPU without VNNI (AVX-512 VNNI or AVX-VNNI) saturates and reads other "
    "numbers; read int8 with --engine onnxruntime (exact here) or OpenVINO in fp32"
)


def import_openvino():
    """The openvino module; UserError (2) naming the extra when it is missing, or the reason
    when it is installed but cannot load (a missing shared library, say)."""
    try:
        import openvino
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "openvino":
            raise UserError(f"openvino is installed but cannot load: {e}", code=2) from None
        raise UserError(f"openvino is not installed: {OPENVINO_EXTRA}", code=2) from None
    except ImportError as e:
        raise UserError(f"openvino is installed but cannot load: {e}", code=2) from None
    return openvino


@cache
def shared_core():
    """The process's one OpenVINO Core, kept until exit. OpenVINO's CPU plugin (2026.4) gives
    the main thread its own signal stack per Core and puts the previous one back when that Core
    goes; Cores that do not go in reverse order leave the thread on an unmapped signal stack,
    and the next signal (a child's SIGCHLD, Ctrl-C) kills the process with SIGSEGV. One Core,
    as OpenVINO's own samples use, never does."""
    return import_openvino().Core()


def has_bf16(core) -> bool:
    """Whether OpenVINO's CPU plugin computes in bf16 here (AVX512_BF16 or AMX)."""
    return "BF16" in core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")


def compile_config(precision: str, batch: int, threads: int | None) -> dict[str, str]:
    """The compile properties: the precision hint, LATENCY for batch 1 and THROUGHPUT for
    bulk, and a thread cap (a Ray actor's CPU share, --threads) where given."""
    if precision not in HINTS:
        raise UserError(f"OpenVINO runs fp32, fp16, bf16 or int8 files, not {precision!r}", 2)
    config = {
        "INFERENCE_PRECISION_HINT": HINTS[precision],
        "PERFORMANCE_HINT": "LATENCY" if batch <= 1 else "THROUGHPUT",
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


def chunks(n: int, parts: int) -> list[slice]:
    """`n` images split into at most `parts` nearly equal consecutive slices."""
    parts = max(1, min(parts, n))
    edges = np.linspace(0, n, parts + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


class OpenVinoBackend:
    """One compiled model and its infer requests behind runtime.contract's Backend protocol."""

    max_batch = None

    def __init__(
        self,
        path: str | Path,
        precision: str = "fp32",
        batch: int = 8,
        threads: int | None = None,
        log: Callable[[str], None] = err,
    ):
        ov = import_openvino()
        self.path, self.precision = Path(path), precision
        core = shared_core()
        if precision == "bf16" and not has_bf16(core):
            cpu = core.get_property(DEVICE, "FULL_DEVICE_NAME")
            raise UserError(
                f"--precision bf16: OpenVINO computes in bf16 only on CPUs with AVX512_BF16 or "
                f"AMX, and this one ({cpu}) has neither; read in fp32 or int8",
                code=2,
            )
        if precision == "int8" and int8_saturates():
            raise UserError(SATURATES, code=2)
        config = compile_config(precision, batch, threads)
        self.compiled = _compile(core, self.path, config)
        _check_precision(self.compiled, config, self.path)
        n = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.requests = [self.compiled.create_infer_request() for _ in range(max(1, n))]
        self.outputs = [self.compiled.output(name) for name in OUTPUT_NAMES]
        streams = self.compiled.get_property("NUM_STREAMS")
        threads_used = self.compiled.get_property("INFERENCE_NUM_THREADS")
        self.hint = config["PERFORMANCE_HINT"]
        self.name = (
            f"OpenVINO {ov.__version__.split('-')[0]} ({DEVICE} {precision}, {self.hint}, "
            f"{streams} stream(s), {threads_used} threads)"
        )

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The four outputs; the batch is spread over the infer requests (THROUGHPUT: one per
        stream). An OpenVINO error is a BackendError: the reader loses that batch only."""
        parts = chunks(len(images), len(self.requests))
        try:
            for request, part in zip(self.requests, parts, strict=False):
                request.start_async({INPUT_NAME: np.ascontiguousarray(images[part])})
            results = []
            for request, _ in zip(self.requests, parts, strict=False):
                request.wait()
                results.append([request.get_tensor(o).data.copy() for o in self.outputs])
        except Exception as e:  # OpenVINO raises RuntimeError with its own message
            raise BackendError(
                f"OpenVINO ({self.precision}) failed on a batch of {len(images)} image(s): "
                f"{one_line(e, last=True)}"
            ) from None
        return {
            name: np.concatenate([r[i] for r in results]) for i, name in enumerate(OUTPUT_NAMES)
        }

    def close(self) -> None:
        """Drop the requests and the compiled model (OpenVINO frees them, and its threads,
        when unreferenced)."""
        self.requests, self.compiled = [], None


def _compile(core, path: Path, config: dict):
    try:
        return core.compile_model(core.read_model(str(path)), DEVICE, config)
    except Exception as e:  # OpenVINO's RuntimeError for a file it cannot read or compile
        raise UserError(f"{path}: OpenVINO cannot load it ({one_line(e, last=True)})", 2) from None


def _check_precision(compiled, config: dict, path: Path) -> None:
    """The compiled model must compute in the precision asked for, never the CPU's default."""
    got = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    want = config["INFERENCE_PRECISION_HINT"]
    if want not in got:  # OpenVINO reports <Type: 'float32'> or <Type: 'bfloat16'>
        aliases = {"f32": "float32", "bf16": "bfloat16"}
        if aliases[want] not in got:
            raise UserError(f"{path}: OpenVINO compiled it in {got}, not {want} as asked", code=2)
