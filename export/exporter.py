"""`digit-export`'s steps: checkpoint -> model.onnx (+ model.fp16.onnx) -> parity gate -> engines.

Every file is made in a temporary directory inside the output directory and moved into place
only after its graph passed the TensorRT rules and the parity gate, and model.json is written
last: a failed export never leaves a model that looks usable.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
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
from digit_reader.export.tensorrt_engine import BatchProfile, build_engine, why_no_engine
from digit_reader.runtime.decode import DEFAULT_THRESHOLD
from digit_reader.runtime.draw import write_comparisons
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.modelcard import CARD_NAME, INPUT_NAME, ModelCard, sha256_of
from digit_reader.runtime.trt_backend import probe
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


def versions(found) -> dict:
    import onnxruntime
    import torchvision

    out = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }
    if found.version:
        out["tensorrt"] = found.version
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
    """Export and gate; returns a summary (files, sizes, parity, engine status, seconds).

    Everything is made and gated in a temporary directory inside the output directory; only
    then are the files moved into place and model.json written. An engine that cannot be made
    is skipped with its reason (in model.json and on stderr) unless --engine demands it, in
    which case the export fails and the output directory stays as it was.
    """
    t_start = time.perf_counter()
    opts.profile.validate()
    device = _resolve_device(opts.device)
    if device == "cuda":
        parity.fp32_reference()
    ckpt = checkpoint.checkpoint_path(opts.source)
    out = opts.out or default_out(opts.source)
    found = probe()
    no_engine = why_no_engine(found)
    if no_engine and opts.engine:  # say so before minutes of export work
        raise UserError(f"--engine: no TensorRT engine can be built here: {no_engine}", code=1)
    model, cfg = checkpoint.load_model(ckpt, "cpu")
    sharpen = bool(cfg.extra.get("sharpen"))
    _log(f"exporting {ckpt} ({cfg.backbone}, canvas {cfg.canvas[0]}x{cfg.canvas[1]}) to {out}")
    detector = DeployableDetector(model, cfg)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"out": str(out), "checkpoint": str(ckpt), "files": {}, "parity": {}}
    precisions = ["fp32", "fp16"] if opts.fp16 else ["fp32"]
    card = _card(cfg, detector.top_k, sharpen, opts.opset, ckpt, found)
    try:
        with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as tmp:
            tmp = Path(tmp)
            _graphs(opts, tmp, detector, precisions, summary)
            root = opts.data or samples.data_root_of(ckpt)
            paths, origin = samples.sample_paths(root, opts.parity_images, cache_dir=tmp)
            _log(f"parity gate on {len(paths)} images from {origin}")
            canvases = samples.canvases(paths, cfg.canvas, sharpen)
            ref = parity.eager_detections(model.to(device), canvases, device=device)
            gate = Gate([p.name for p in paths], canvases, ref, cfg.box_score_thresh, opts)
            from digit_reader.runtime.ort_backend import OrtBackend

            for precision in precisions:
                name = FILES[precision][0]
                result = gate.check(f"onnxruntime {precision}", OrtBackend(tmp / name, device))
                summary["parity"][f"onnxruntime {precision}"] = result.summary()
                card.add_file(tmp / name, precision, parity=result.summary())
            if no_engine:
                summary["engine"] = f"TensorRT engine skipped: {no_engine}"
            else:
                summary["engine"] = _engines(opts, tmp, found, precisions, card, gate, cfg)
            if not summary["engine"].startswith("built"):
                card.engine_note = summary["engine"]
                _log(summary["engine"])
            _install(tmp, out, card)
    except BaseException:
        if created:  # the directory did not exist before: leave no trace of it
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    for name in card.files:
        summary["files"][name] = card.files[name]["bytes"]
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    return summary


def _card(cfg, top_k: int, sharpen: bool, opset: int, ckpt: Path, found) -> ModelCard:
    return ModelCard(
        canvas=cfg.canvas,
        max_detections=top_k,
        sharpen=sharpen,
        inputs=[{"name": INPUT_NAME, "dtype": "uint8", "shape": ["batch", 3, *cfg.canvas]}],
        outputs=[
            {"name": "num_dets", "dtype": "int32", "shape": ["batch"]},
            {"name": "boxes", "dtype": "float32", "shape": ["batch", top_k, 4]},
            {"name": "scores", "dtype": "float32", "shape": ["batch", top_k]},
            {"name": "labels", "dtype": "int32", "shape": ["batch", top_k]},
        ],
        opset=opset,
        source_checkpoint={"path": str(ckpt), "sha256": sha256_of(ckpt)},
        versions=versions(found),
    )


def _graphs(opts: ExportOptions, tmp: Path, detector, precisions, summary: dict) -> None:
    """model.onnx (+ model.fp16.onnx) in `tmp`, each checked against TensorRT's import rules."""
    t0 = time.perf_counter()
    export_onnx(detector, tmp / FILES["fp32"][0], opts.opset)
    summary["onnx_export_s"] = round(time.perf_counter() - t0, 2)
    if "fp16" in precisions:
        t0 = time.perf_counter()
        fp16.convert_file(tmp / FILES["fp32"][0], tmp / FILES["fp16"][0])
        summary["fp16_convert_s"] = round(time.perf_counter() - t0, 2)
    for precision in precisions:
        check_rules(tmp / FILES[precision][0])


@dataclass
class Gate:
    """The parity gate's images, the eager model's detections on them, and the rule's settings."""

    names: list[str]
    canvases: np.ndarray  # uint8 [N, 3, H, W], the preprocessing contract applied
    ref: list  # the eager model's detections on them
    score_floor: float
    opts: ExportOptions

    def check(self, name: str, backend) -> parity.Parity:
        """Run `backend` on the canvases; raise ExportFailed unless it passes the rule. A
        failure also draws each failing image, eager beside `name`, outside the output
        directory (a failed export writes nothing there), and says where."""
        precision = name.split()[-1]
        got = parity.backend_detections(backend, self.canvases)
        result = parity.measure(self.ref, got, self.names)
        try:
            _gate(name, result, precision, self.score_floor, self.opts.fp16_min_agreement)
        except ExportFailed as e:
            _, bad = result.verdict(precision, self.score_floor, self.opts.fp16_min_agreement)
            where = self.pictures(name, {d.name for d in bad}, got)
            raise ExportFailed(f"{e}\npictures (eager left, {name} right): {where}") from None
        return result

    def pictures(self, name: str, failing: set[str], got: list) -> Path:
        where = Path(tempfile.mkdtemp(prefix="digit-export-parity-"))
        items = [
            (n, self.canvases[i].transpose(1, 2, 0), self.ref[i], got[i])
            for i, n in enumerate(self.names)
            if n in failing
        ]
        write_comparisons(where, items, ("PyTorch eager", name), DEFAULT_THRESHOLD)
        return where


def _install(tmp: Path, out: Path, card: ModelCard) -> None:
    """Move the gated files from `tmp` into `out`, drop files of an older export, write the card.

    model.json goes first out and last in: between the two, a reader finds no card and refuses.
    """
    (out / CARD_NAME).unlink(missing_ok=True)
    for names in FILES.values():
        for name in names:
            if name not in card.files:
                (out / name).unlink(missing_ok=True)
    for name in card.files:
        os.replace(tmp / name, out / name)
    card.save(out / CARD_NAME)


def _engines(opts, tmp: Path, found, precisions, card: ModelCard, gate: Gate, cfg) -> str:
    """Build the TensorRT engines in `tmp` and hold them to the same gate as the ONNX graphs.

    Returns "built ..." or, without --engine, why no engine was written (any failure: parser,
    builder, runtime or parity); with --engine a failure raises.
    """
    from digit_reader.runtime.trt_backend import TensorRTBackend

    entry = {"tensorrt": found.version, "gpu": found.gpu, "compute_capability": found.capability}
    built = {}
    try:
        for precision in precisions:
            onnx_name, engine_name = FILES[precision]
            build_engine(
                tmp / onnx_name,
                tmp / engine_name,
                cfg.canvas,
                opts.profile,
                opts.workspace_gib,
                opts.timing_cache,
                log=_log,
            )
            backend = TensorRTBackend(tmp / engine_name, entry)
            try:
                result = gate.check(f"TensorRT {precision}", backend)
            finally:
                backend.close()
            built[engine_name] = (precision, onnx_name, result.summary())
    except Exception as e:  # UserError/ExportFailed, or TensorRT's own RuntimeErrors
        for name in list(built) + [FILES[p][1] for p in precisions]:
            (tmp / name).unlink(missing_ok=True)
        if opts.engine:
            raise
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return f"TensorRT engine not written: {first}"
    card.engine_batch = {"min": opts.profile.min, "opt": opts.profile.opt, "max": opts.profile.max}
    for engine_name, (precision, onnx_name, gate_summary) in built.items():
        card.add_file(tmp / engine_name, precision, source=onnx_name, parity=gate_summary, **entry)
    return f"built with TensorRT {found.version} on {found.gpu}"
