"""`digit-export`'s steps: checkpoint -> model.onnx (+ model.fp16.onnx) -> parity gate -> engines.

Every file is made in a temporary directory inside the output directory and moved into place
only after its graph passed the TensorRT rules and the parity gate, and model.json is written
last: a failed export never leaves a model that looks usable.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch

from digit_reader.export import fp16, graph_rules, parity
from digit_reader.export.defaults import (
    BOX_TOL_PX,
    FP16_MIN_AGREEMENT,
    OPSET,
    PARITY_IMAGES,
    SCORE_TOL,
    WORKSPACE_GIB,
)
from digit_reader.export.graph import DeployableDetector
from digit_reader.export.onnx_export import export_onnx
from digit_reader.export.tensorrt_engine import BatchProfile, build_engine, probe, why_no_engine
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.modelcard import CARD_NAME, INPUT_NAME, ModelCard, sha256_of
from digit_reader.train import checkpoint, samples

FILES = {"fp32": ("model.onnx", "model.engine"), "fp16": ("model.fp16.onnx", "model.fp16.engine")}


class ExportFailed(UserError):
    """The graph broke a TensorRT rule or the parity gate; nothing was written."""


@dataclass
class ExportOptions:
    source: Path  # run directory or checkpoint file
    out: Path | None = None  # default: RUN/export
    fp16: bool = False
    engine: bool = False  # an engine is mandatory (fail where none can be built)
    profile: BatchProfile = field(default_factory=BatchProfile)
    workspace_gib: float = WORKSPACE_GIB
    timing_cache: Path | None = None
    parity_images: int = PARITY_IMAGES
    fp16_min_agreement: float = FP16_MIN_AGREEMENT
    data: Path | None = None  # images for the gate; default the run's own data, else synthetic
    device: str = "cpu"  # where the gate runs the eager model and ONNX Runtime
    opset: int = OPSET


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def default_out(source: Path) -> Path:
    return (source if source.is_dir() else source.parent) / "export"


def versions() -> dict:
    import onnxruntime
    import torchvision

    out = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }
    trt_version = probe()[0]
    if trt_version:
        out["tensorrt"] = trt_version
    return out


def check_rules(path: Path) -> None:
    found = graph_rules.violations(onnx.load(str(path), load_external_data=False))
    if found:
        lines = "\n".join(f"  {v}" for v in found)
        raise ExportFailed(f"{path.name} breaks TensorRT's import rules:\n{lines}")


def _gate(
    name: str,
    result: parity.Parity,
    precision: str,
    score_floor: float,
    min_agreement: float = FP16_MIN_AGREEMENT,
) -> None:
    _log(f"parity {name}: {result.summary()}")
    passed, bad = result.verdict(precision, score_floor, min_agreement)
    if passed:
        return
    lines = "\n".join("  " + parity.describe(d) for d in bad[:20])
    if precision == "fp32":
        raise ExportFailed(
            f"{name} disagrees with the eager model on {len(bad)} of {len(result.diffs)} "
            f"images (rule: same numbers, boxes within {BOX_TOL_PX} px, scores within "
            f"{SCORE_TOL}):\n{lines}"
        )
    raise ExportFailed(
        f"{name} reads {100 * result.agreement:.1f} % of the numbers as the eager model does, "
        f"below {100 * min_agreement:.0f} % (--fp16-min-agreement):\n{lines}"
    )


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible to torch", code=2)
    return device


def run(opts: ExportOptions) -> dict:
    """Export and gate; returns a summary (files, sizes, parity, engine status, seconds)."""
    t_start = time.perf_counter()
    opts.profile.validate()
    device = _resolve_device(opts.device)
    if device == "cuda":  # fp32 parity means fp32: no TF32 in the eager reference
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    ckpt = checkpoint.checkpoint_path(opts.source)
    out = opts.out or default_out(opts.source)
    found = probe()
    no_engine = why_no_engine(*found[:2])
    if no_engine and opts.engine:  # say so before minutes of export work
        raise UserError(f"--engine: no TensorRT engine can be built here: {no_engine}", code=1)
    model, cfg = checkpoint.load_model(ckpt, "cpu")
    sharpen = bool(cfg.extra.get("sharpen"))
    _log(f"exporting {ckpt} ({cfg.backbone}, canvas {cfg.canvas[0]}x{cfg.canvas[1]}) to {out}")
    detector = DeployableDetector(model, cfg)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"out": str(out), "checkpoint": str(ckpt), "files": {}, "parity": {}}
    precisions = ["fp32", "fp16"] if opts.fp16 else ["fp32"]

    with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        export_onnx(detector, tmp / FILES["fp32"][0], opts.opset)
        summary["onnx_export_s"] = round(time.perf_counter() - t0, 2)
        if opts.fp16:
            t0 = time.perf_counter()
            fp16.convert_file(tmp / FILES["fp32"][0], tmp / FILES["fp16"][0])
            summary["fp16_convert_s"] = round(time.perf_counter() - t0, 2)
        for precision in precisions:
            check_rules(tmp / FILES[precision][0])

        root = opts.data or samples.data_root_of(ckpt)
        paths, origin = samples.sample_paths(root, opts.parity_images, cache_dir=tmp)
        names = [p.name for p in paths]
        _log(f"parity gate on {len(paths)} images from {origin}")
        canv = samples.canvases(paths, cfg.canvas, sharpen)
        ref = parity.eager_detections(model.to(device), canv, device=device)
        from digit_reader.runtime.ort_backend import OrtBackend

        for precision in precisions:
            backend = OrtBackend(tmp / FILES[precision][0], device)
            result = parity.measure(ref, parity.backend_detections(backend, canv), names)
            _gate(
                f"onnxruntime {precision}",
                result,
                precision,
                cfg.box_score_thresh,
                opts.fp16_min_agreement,
            )
            summary["parity"][f"onnxruntime {precision}"] = result.summary()
        # an old model.json would describe other files; it comes back, new, at the very end
        (out / CARD_NAME).unlink(missing_ok=True)
        for precision in precisions:
            name = FILES[precision][0]
            os.replace(tmp / name, out / name)

    card = ModelCard(
        canvas=cfg.canvas,
        max_detections=detector.top_k,
        sharpen=sharpen,
        inputs=[{"name": INPUT_NAME, "dtype": "uint8", "shape": ["batch", 3, *cfg.canvas]}],
        outputs=[
            {"name": "num_dets", "dtype": "int32", "shape": ["batch"]},
            {"name": "boxes", "dtype": "float32", "shape": ["batch", detector.top_k, 4]},
            {"name": "scores", "dtype": "float32", "shape": ["batch", detector.top_k]},
            {"name": "labels", "dtype": "int32", "shape": ["batch", detector.top_k]},
        ],
        opset=opts.opset,
        source_checkpoint={"path": str(ckpt), "sha256": sha256_of(ckpt)},
        versions=versions(),
    )
    for precision in precisions:
        gate = summary["parity"][f"onnxruntime {precision}"]
        card.add_file(out / FILES[precision][0], precision, parity=gate)
    # a re-export must not leave engines of an older graph listed or lying around
    for precision in ("fp32", "fp16"):
        (out / FILES[precision][1]).unlink(missing_ok=True)
    if no_engine:
        summary["engine"] = f"TensorRT engine skipped: {no_engine}"
        _log(summary["engine"])
    else:
        summary["engine"] = _engines(opts, out, found, precisions, card, canv, ref, names, cfg)
    card.save(out / CARD_NAME)
    for name in card.files:
        summary["files"][name] = card.files[name]["bytes"]
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    return summary


def _engines(opts, out, found, precisions, card, canv, ref, names, cfg) -> str:
    """Build the TensorRT engines and hold them to the same parity gate as the ONNX graphs."""
    trt_version, _, gpu, capability = found
    from digit_reader.runtime.trt_backend import TensorRTBackend

    card.engine_batch = {"min": opts.profile.min, "opt": opts.profile.opt, "max": opts.profile.max}
    for precision in precisions:
        onnx_name, engine_name = FILES[precision]
        build_engine(
            out / onnx_name,
            out / engine_name,
            cfg.canvas,
            opts.profile,
            opts.workspace_gib,
            opts.timing_cache,
            log=_log,
        )
        entry = {"tensorrt": trt_version, "gpu": gpu, "compute_capability": capability}
        backend = TensorRTBackend(out / engine_name, entry)
        result = parity.measure(ref, parity.backend_detections(backend, canv), names)
        try:
            _gate(
                f"TensorRT {precision}",
                result,
                precision,
                cfg.box_score_thresh,
                opts.fp16_min_agreement,
            )
        except ExportFailed:
            (out / engine_name).unlink(missing_ok=True)
            raise
        card.add_file(
            out / engine_name, precision, source=onnx_name, parity=result.summary(), **entry
        )
    return f"built with TensorRT {trt_version} on {gpu}"
