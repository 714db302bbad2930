"""`digit-export`'s steps: checkpoint -> model.onnx (+ model.fp16.onnx, model.int8.onnx, OpenVINO
IR) -> parity gate -> engines -> model.json.

Every file is made in a temporary directory inside the output directory and moved into place
only after its graph passed the TensorRT rules and the parity gate (export/gate.py), and
model.json is written last (export/install.py): a failed export never leaves a model that
looks usable. The int8 graph has its own gate images (more of them: its rule allows a few
flips) and a second rule, on accuracy, which needs their labels; it is gated twice, as ONNX
Runtime's CPU provider runs it (the CPU form) and as the file is (TensorRT's semantics).
"""

from __future__ import annotations

import contextlib
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch

from digit_reader.export import fp16, graph_cache, graph_rules, int8, openvino_ir
from digit_reader.export.defaults import (
    CALIB_CACHE,
    CALIB_IMAGES,
    CALIB_METHOD,
    CALIB_PERCENTILE,
    INT8_PARITY_IMAGES,
    OPSET,
    PARITY_IMAGES,
    WORKSPACE_GIB,
)
from digit_reader.export.engines import build_and_gate
from digit_reader.export.gate import ExportFailed, Gate
from digit_reader.export.graph import DeployableDetector
from digit_reader.export.install import install
from digit_reader.export.onnx_export import export_onnx
from digit_reader.export.tensorrt_engine import BatchProfile, why_no_engine
from digit_reader.runtime.console import err
from digit_reader.runtime.contract import (
    BF16_MIN_AGREEMENT,
    DEFAULT_DEVICE,
    FILES,
    FP16_MIN_AGREEMENT,
    INT8_MAX_ACCURACY_DROP,
    INT8_MIN_AGREEMENT,
    Form,
    ParityRule,
    parity_rule,
    resolve_device,
)
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.modelcard import ModelCard, sha256_of
from digit_reader.runtime.trt_backend import probe
from digit_reader.train import checkpoint, samples
from digit_reader.train.eager import candidates, eager_detections, fp32_reference

__all__ = ["ExportFailed", "ExportOptions", "Gate", "run"]


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
    bf16_min_agreement: float = BF16_MIN_AGREEMENT  # the fp32 IR run in bf16 (--openvino)
    data: Path | None = None  # images for the gate; default the run's own data, else synthetic
    device: str = DEFAULT_DEVICE  # where the gate runs the eager model and ONNX Runtime
    opset: int = OPSET
    int8: bool = False
    calib_images: int = CALIB_IMAGES
    calib_method: str = CALIB_METHOD
    calib_percentile: float = CALIB_PERCENTILE
    int8_parity_images: int = INT8_PARITY_IMAGES
    int8_min_agreement: float = INT8_MIN_AGREEMENT
    int8_max_accuracy_drop: float = INT8_MAX_ACCURACY_DROP
    openvino: bool = False  # also OpenVINO IR of the fp32 (and int8) graphs
    graph_cache: str | None = None  # directory or "off"; default export/graph_cache.py's

    @property
    def precisions(self) -> list[str]:
        return ["fp32"] + ["fp16"] * self.fp16 + ["int8"] * self.int8

    def gate_images(self, precision: str) -> int:
        return self.int8_parity_images if precision == "int8" else self.parity_images

    def rule(self, precision: str) -> ParityRule:
        """runtime.contract's rule for `precision`, with this export's thresholds."""
        if precision == "int8":
            return parity_rule("int8", self.int8_min_agreement, self.int8_max_accuracy_drop)
        if precision == "fp16":
            return parity_rule("fp16", self.fp16_min_agreement)
        if precision == "bf16":
            return parity_rule("bf16", self.bf16_min_agreement)
        return parity_rule(precision)


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


@dataclass
class Job:
    """One export in progress: what it makes, where, and what it has found so far."""

    opts: ExportOptions
    ckpt: Path
    out: Path
    device: str
    found: object  # runtime.trt_backend.TensorRTProbe
    card: ModelCard
    summary: dict
    graph_cache: tuple[Path, str] | None = None  # (cache root, model.onnx's key), None: off


def run(opts: ExportOptions) -> dict:
    """Export and gate; returns a summary (files, sizes, parity, engine status, seconds).

    An engine that cannot be made is skipped with its reason (in model.json and on stderr)
    unless --engine demands it, in which case the export fails and the output directory stays
    as it was.
    """
    t_start = time.perf_counter()
    job, model, cfg, detector = _start(opts)
    with _output_dir(job.out), tempfile.TemporaryDirectory(prefix=".export-", dir=job.out) as tmp:
        _make_and_gate(job, Path(tmp), model, cfg, detector)
        install(Path(tmp), job.out, job.card)
    for name, entry in job.card.files.items():  # an IR's size includes its weights
        job.summary["files"][name] = entry["bytes"] + entry.get("weights", {}).get("bytes", 0)
    job.summary["seconds"] = round(time.perf_counter() - t_start, 1)
    return job.summary


def _start(opts: ExportOptions):
    """Check the options, load the model, say what will be made: (job, model, cfg, graph)."""
    opts.profile.validate()
    if opts.int8:
        int8.check_method(opts.calib_method)
    device = resolve_device(opts.device, torch.cuda.is_available())
    if device.startswith("cuda"):
        fp32_reference()
    ckpt = checkpoint.checkpoint_path(opts.source)
    out = opts.out or default_out(opts.source)
    found = probe()
    no_engine = why_no_engine(found)
    if no_engine and opts.engine:  # say so before minutes of export work
        raise UserError(f"--engine: no TensorRT engine can be built here: {no_engine}", code=1)
    if opts.openvino:
        openvino_ir.import_openvino()  # a missing extra is a usage error, before the work
    ckpt_sha256 = sha256_of(ckpt)
    cache = _graph_cache(opts, ckpt_sha256)  # the code read now, before the minutes of work
    model, cfg = checkpoint.load_model(ckpt, "cpu")
    err(f"exporting {ckpt} ({cfg.backbone}, canvas {cfg.canvas[0]}x{cfg.canvas[1]}) to {out}")
    detector = DeployableDetector(model, cfg)
    card = ModelCard.for_graph(
        cfg.canvas,
        detector.top_k,
        sharpen=cfg.sharpen,
        opset=opts.opset,
        source_checkpoint={"path": str(ckpt), "sha256": ckpt_sha256},
        versions=versions(found),
    )
    summary: dict = {"out": str(out), "checkpoint": str(ckpt), "files": {}, "parity": {}}
    job = Job(opts, ckpt, out, device, found, card, summary, cache)
    return job, model, cfg, detector


def _graph_cache(opts: ExportOptions, ckpt_sha256: str) -> tuple[Path, str] | None:
    """Where model.onnx may come from and go to, and its key; None where the cache is off."""
    root = graph_cache.cache_root(opts.graph_cache)
    if root is None:
        return None
    versions = graph_cache.graph_versions()
    return root, graph_cache.graph_key(ckpt_sha256, opts.opset, versions, graph_cache.code_digest())


@contextlib.contextmanager
def _output_dir(out: Path):
    """The output directory; one this export created is removed again if the export fails."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield out
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def _make_and_gate(job: Job, tmp: Path, model, cfg, detector) -> None:
    """Every file in `tmp`, each gated, and entered in the card."""
    opts = job.opts
    n_gate = max(opts.gate_images(p) for p in opts.precisions)
    n_calib = opts.calib_images if opts.int8 else 0
    root = opts.data or samples.data_root_of(job.ckpt)
    found, origin, labelled = samples.sample_set(root, max(n_gate, n_calib), cache_dir=tmp)
    _graphs(opts, tmp, detector, job.summary, job.graph_cache)
    calibration = None
    if opts.int8:
        calib = _calibration(opts, found[:n_calib], origin, cfg.canvas, cfg.sharpen)
        calibration = _int8_graph(opts, tmp, job.out, calib, job.summary)
        check_rules(tmp / FILES[("onnx", "int8")])
    gate = _gate(job, model, cfg, found[:n_gate], origin, labelled)
    for precision in opts.precisions:
        _gate_onnx(gate, tmp, precision, job, calibration)
    if opts.openvino:
        job.summary["parity"] |= openvino_ir.write_and_gate(opts.precisions, tmp, job.card, gate)
    no_engine = why_no_engine(job.found)
    if no_engine:
        job.summary["engine"] = f"TensorRT engine skipped: {no_engine}"
    else:
        job.summary["engine"] = build_and_gate(opts, tmp, job.found, job.card, gate, job.device)
    if not job.summary["engine"].startswith("built"):
        job.card.engine_note = job.summary["engine"]
        err(job.summary["engine"])


def _gate(job: Job, model, cfg, found: list, origin: str, labelled: bool) -> Gate:
    """The gate's images through the preprocessing contract, and the eager model on them."""
    opts = job.opts
    err(
        f"parity gate on {len(found[: opts.parity_images])} images from {origin}"
        + (f" (int8: {len(found)})" if opts.int8 else "")
    )
    canvases, scales, sizes = samples.letterboxed([s.path for s in found], cfg.canvas, cfg.sharpen)
    model = model.to(job.device)
    ref = eager_detections(model, canvases, device=job.device)
    truth = [s.number for s in found] if labelled else None
    names = [s.path.name for s in found]

    def before_nms(indices: list[int]):
        return candidates(model, canvases[indices], device=job.device)

    gate = Gate(names, canvases, ref, cfg.box_score_thresh, opts, truth, scales, sizes)
    gate.candidates = before_nms
    return gate


def _gate_onnx(gate: Gate, tmp: Path, precision: str, job: Job, calibration: dict | None):
    """Gate one ONNX graph in ONNX Runtime and enter it in the card. int8 twice: as the reader
    runs it here (on the CPU: the CPU form) and in the other form (the file as is, TensorRT's
    semantics; or on CUDA, the CPU form on the CPU)."""
    from digit_reader.runtime.ort_backend import OrtBackend

    form = Form("onnxruntime", precision, FILES[("onnx", precision)])
    path = tmp / form.file
    checked = gate.check(form, OrtBackend(path, job.device, precision=precision))
    job.summary["parity"][form.label] = checked.summary()
    if precision != "int8":
        job.card.add_file(path, precision, parity=checked.summary())
        return
    on_cpu = job.device == "cpu"
    name = "file as is" if on_cpu else "CPU form"
    other = OrtBackend(path, "cpu", precision="int8", int8_cpu_form=not on_cpu)
    second = gate.check(form, other, name)
    job.summary["parity"][f"onnxruntime int8 ({name})"] = second.summary()
    job.card.add_file(
        path,
        "int8",
        parity=checked.summary(),
        parity_other_form={"form": name, "parity": second.summary(), **second.figures()},
        **checked.figures(),
        calibration=calibration,
    )


def _graphs(opts: ExportOptions, tmp: Path, detector, summary: dict, cache) -> None:
    """model.onnx (+ model.fp16.onnx) in `tmp`, each checked against TensorRT's import rules;
    model.onnx comes from the graph cache where an earlier export of this checkpoint left it."""
    fp32_file, fp16_file = tmp / FILES[("onnx", "fp32")], tmp / FILES[("onnx", "fp16")]
    t0 = time.perf_counter()
    root, key = cache or (None, "")
    cached = graph_cache.exported(
        root, key, fp32_file, lambda dst: export_onnx(detector, dst, opts.opset)
    )
    summary["onnx_export_s"] = round(time.perf_counter() - t0, 2)
    summary["onnx_from_cache"] = cached
    if cached:
        err(f"model.onnx from the graph cache ({graph_cache.entry_path(root, key)})")
    if opts.fp16:
        t0 = time.perf_counter()
        fp16.convert_file(fp32_file, fp16_file)
        summary["fp16_convert_s"] = round(time.perf_counter() - t0, 2)
    for path in (fp32_file, fp16_file) if opts.fp16 else (fp32_file,):
        check_rules(path)


def _calibration(opts, found: list, origin: str, canvas, sharpen: bool) -> int8.Calibration:
    paths = [s.path for s in found]
    err(f"int8: calibration on {len(paths)} images from {origin} ({opts.calib_method})")
    return int8.Calibration(
        samples.canvases(paths, canvas, sharpen),
        [p.name for p in paths],
        origin,
        opts.calib_method,
        opts.calib_percentile,
    )


def _int8_graph(opts, tmp: Path, out: Path, calib: int8.Calibration, summary: dict) -> dict:
    """model.int8.onnx and its calibration cache in `tmp`, from a copy of model.onnx; a cache
    left in `out` by an earlier export is reused when it fits. model.onnx must come out
    byte-identical: a quantizer that writes to its input would corrupt the fp32 export.
    Returns what the calibration was (model.json's int8 entry records it)."""
    src = tmp / FILES[("onnx", "fp32")]
    before = sha256_of(src)
    dst = tmp / FILES[("onnx", "int8")]
    info = int8.quantize(src, dst, tmp / CALIB_CACHE, calib, tmp / "int8-work", out / CALIB_CACHE)
    shutil.rmtree(tmp / "int8-work")
    if sha256_of(src) != before:
        raise ExportFailed(f"int8 quantization changed {src.name}; nothing was written")
    summary["int8_quantize_s"] = info["seconds"]
    summary["int8_calibration"] = {
        "images": len(calib.names),
        "method": calib.method,
        "percentile": calib.percentile if calib.method == "percentile" else None,
        "origin": calib.origin,
        "cache": CALIB_CACHE,
        "from_cache": not info["calibrated"],
    }
    where = "from the calibration cache" if not info["calibrated"] else "calibrated"
    err(f"int8: {info['nodes']} nodes quantized ({where}) in {info['seconds']} s")
    return summary["int8_calibration"]
