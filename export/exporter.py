"""`digit-export`'s steps: checkpoint -> model.onnx (+ model.fp16.onnx, model.int8.onnx) ->
parity gate -> engines.

Every file is made in a temporary directory inside the output directory and moved into place
only after its graph passed the TensorRT rules and the parity gate, and model.json is written
last: a failed export never leaves a model that looks usable. The int8 graph has its own gate
images (more of them: its rule allows a few flips) and a second rule, on accuracy, which needs
their labels; it is gated twice, as ONNX Runtime's CPU provider runs it (the CPU form) and as
the file is (TensorRT's semantics).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from digit_reader.export import fp16, graph_rules, int8, parity
from digit_reader.export.defaults import (
    BOX_TOL_PX,
    CALIB_CACHE,
    CALIB_IMAGES,
    CALIB_METHOD,
    CALIB_PERCENTILE,
    FILES,
    FP16_MIN_AGREEMENT,
    INT8_MAX_ACCURACY_DROP,
    INT8_MIN_AGREEMENT,
    INT8_PARITY_IMAGES,
    OPSET,
    PARITY_IMAGES,
    SCORE_TOL,
    WORKSPACE_GIB,
)
from digit_reader.export.graph import DeployableDetector
from digit_reader.export.onnx_export import export_onnx
from digit_reader.export.tensorrt_engine import BatchProfile, build_engine, why_no_engine
from digit_reader.runtime.decode import DEFAULT_THRESHOLD, Detections
from digit_reader.runtime.draw import write_comparisons
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.modelcard import CARD_NAME, INPUT_NAME, ModelCard, sha256_of
from digit_reader.runtime.preprocess import boxes_from_canvas
from digit_reader.runtime.trt_backend import probe
from digit_reader.train import checkpoint, samples


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
    int8: bool = False
    calib_images: int = CALIB_IMAGES
    calib_method: str = CALIB_METHOD
    calib_percentile: float = CALIB_PERCENTILE
    int8_parity_images: int = INT8_PARITY_IMAGES
    int8_min_agreement: float = INT8_MIN_AGREEMENT
    int8_max_accuracy_drop: float = INT8_MAX_ACCURACY_DROP

    @property
    def precisions(self) -> list[str]:
        return ["fp32"] + ["fp16"] * self.fp16 + ["int8"] * self.int8

    def gate_images(self, precision: str) -> int:
        return self.int8_parity_images if precision == "int8" else self.parity_images

    def min_agreement(self, precision: str) -> float:
        return self.int8_min_agreement if precision == "int8" else self.fp16_min_agreement


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
    accuracy: tuple[float, float, float] | None = None,
) -> None:
    """Raise ExportFailed naming the failing images unless `result` meets the precision's rule.
    `accuracy` (int8): (the form's accuracy, the eager model's, the largest drop allowed)."""
    _log(f"parity {name}: {result.summary()}")
    passed, bad = result.verdict(precision, score_floor, min_agreement)
    accurate = accuracy is None or accuracy[0] >= accuracy[1] - accuracy[2] - 1e-9
    if passed and accurate:
        return
    lines = "\n".join("  " + parity.describe(d) for d in bad[:20])
    if precision == "fp32":
        raise ExportFailed(
            f"{name} disagrees with the eager model on {len(bad)} of {len(result.diffs)} "
            f"images (rule: same numbers, boxes within {BOX_TOL_PX} px, scores within "
            f"{SCORE_TOL}):\n{lines}"
        )
    option = f"--{precision}-min-agreement"
    head = f"{name} reads {100 * result.agreement:.1f} % of the numbers as the eager model does"
    head += f", below {100 * min_agreement:g} % ({option})" if not passed else ""
    if not accurate:
        got, eager, drop = accuracy
        head += (
            f"{',' if passed else ';'} its accuracy {got:.3f} is more than {100 * drop:g} "
            f"point(s) below the eager model's {eager:.3f} (--int8-max-accuracy-drop)"
        )
    raise ExportFailed(f"{head}:\n{lines}")


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
    if opts.int8:
        int8.check_method(opts.calib_method)
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
    precisions = opts.precisions
    card = _card(cfg, detector.top_k, sharpen, opts.opset, ckpt, found)
    try:
        with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as tmp:
            tmp = Path(tmp)
            n_gate = max(opts.gate_images(p) for p in precisions)
            n_calib = opts.calib_images if opts.int8 else 0
            root = opts.data or samples.data_root_of(ckpt)
            found_samples, origin, labelled = samples.sample_set(
                root, max(n_gate, n_calib), cache_dir=tmp
            )
            _graphs(opts, tmp, detector, summary)
            if opts.int8:
                calib = _calibration(opts, found_samples[:n_calib], origin, cfg.canvas, sharpen)
                _int8_graph(opts, tmp, out, calib, summary)
                check_rules(tmp / FILES["int8"][0])
            gate_samples = found_samples[:n_gate]
            _log(
                f"parity gate on {len(gate_samples[: opts.parity_images])} images from {origin}"
                + (f" (int8: {len(gate_samples)})" if opts.int8 else "")
            )
            canvases, scales, sizes = samples.letterboxed(
                [s.path for s in gate_samples], cfg.canvas, sharpen
            )
            ref = parity.eager_detections(model.to(device), canvases, device=device)
            truth = [s.number for s in gate_samples] if labelled else None
            gate = Gate(
                [s.path.name for s in gate_samples],
                canvases,
                ref,
                cfg.box_score_thresh,
                opts,
                truth,
                scales,
                sizes,
            )
            for precision in precisions:
                _gate_onnx(gate, tmp, precision, device, card, summary)
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


def _gate_onnx(gate, tmp: Path, precision: str, device: str, card, summary: dict) -> None:
    """Gate one ONNX graph in ONNX Runtime and enter it in the card. int8 twice: as the reader
    runs it here (on the CPU: the CPU form) and in the other form (the file as is, TensorRT's
    semantics; or on CUDA, the CPU form on the CPU)."""
    from digit_reader.runtime.ort_backend import OrtBackend

    path = tmp / FILES[precision][0]
    checked = gate.check(f"onnxruntime {precision}", OrtBackend(path, device, precision=precision))
    summary["parity"][f"onnxruntime {precision}"] = checked.summary()
    if precision != "int8":
        card.add_file(path, precision, parity=checked.summary())
        return
    other, name = (
        (OrtBackend(path, "cpu", precision="int8", int8_cpu_form=False), "file as is")
        if device == "cpu"
        else (OrtBackend(path, "cpu", precision="int8"), "CPU form")
    )
    second = gate.check(f"onnxruntime int8 ({name})", other, "int8")
    summary["parity"][f"onnxruntime int8 ({name})"] = second.summary()
    card.add_file(
        path,
        "int8",
        parity=checked.summary(),
        parity_other_form={"form": name, "parity": second.summary(), **second.figures()},
        **checked.figures(),
        calibration=summary["int8_calibration"],
    )


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


def _graphs(opts: ExportOptions, tmp: Path, detector, summary: dict) -> None:
    """model.onnx (+ model.fp16.onnx) in `tmp`, each checked against TensorRT's import rules."""
    t0 = time.perf_counter()
    export_onnx(detector, tmp / FILES["fp32"][0], opts.opset)
    summary["onnx_export_s"] = round(time.perf_counter() - t0, 2)
    if opts.fp16:
        t0 = time.perf_counter()
        fp16.convert_file(tmp / FILES["fp32"][0], tmp / FILES["fp16"][0])
        summary["fp16_convert_s"] = round(time.perf_counter() - t0, 2)
    for precision in ("fp32", "fp16") if opts.fp16 else ("fp32",):
        check_rules(tmp / FILES[precision][0])


def _calibration(opts, found: list, origin: str, canvas, sharpen: bool) -> int8.Calibration:
    paths = [s.path for s in found]
    _log(f"int8: calibration on {len(paths)} images from {origin} ({opts.calib_method})")
    return int8.Calibration(
        samples.canvases(paths, canvas, sharpen),
        [p.name for p in paths],
        origin,
        opts.calib_method,
        opts.calib_percentile,
    )


def _int8_graph(opts, tmp: Path, out: Path, calib: int8.Calibration, summary: dict) -> None:
    """model.int8.onnx and its calibration cache in `tmp`, from a copy of model.onnx; a cache
    left in `out` by an earlier export is reused when it fits. model.onnx must come out
    byte-identical: a quantizer that writes to its input would corrupt the fp32 export."""
    src = tmp / FILES["fp32"][0]
    before = sha256_of(src)
    info = int8.quantize(
        src, tmp / FILES["int8"][0], tmp / CALIB_CACHE, calib, tmp / "int8-work", out / CALIB_CACHE
    )
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
    _log(f"int8: {info['nodes']} nodes quantized ({where}) in {info['seconds']} s")


@dataclass
class Checked:
    """A form's agreement with the eager model on the gate's images, and for int8 its accuracy
    next to the eager model's (None without labels)."""

    parity: parity.Parity
    accuracy: float | None = None
    eager_accuracy: float | None = None

    def figures(self) -> dict:
        out = {"agreement": self.parity.agreement, "images": len(self.parity.diffs)}
        if self.accuracy is not None:
            out |= {"accuracy": self.accuracy, "eager_accuracy": self.eager_accuracy}
        return out

    def summary(self) -> str:
        text = self.parity.summary()
        if self.accuracy is not None:
            text += f"; accuracy {self.accuracy:.3f} (eager {self.eager_accuracy:.3f})"
        return text


@dataclass
class Gate:
    """The parity gate's images, the eager model's detections on them, and the rule's settings.
    fp32/fp16 are held to the first `parity_images` of them, int8 to `int8_parity_images`."""

    names: list[str]
    canvases: np.ndarray  # uint8 [N, 3, H, W], the preprocessing contract applied
    ref: list  # the eager model's detections on them
    score_floor: float
    opts: ExportOptions
    truth: list[str] | None = None  # the labelled numbers, when the images have labels
    scales: list[float] = field(default_factory=list)  # canvas -> image pixels, per image
    sizes: list[tuple[int, int]] = field(default_factory=list)

    def check(self, name: str, backend, precision: str | None = None) -> Checked:
        """Run `backend` on the canvases; raise ExportFailed unless it passes the rule. A
        failure also draws each failing image, eager beside `name`, outside the output
        directory (a failed export writes nothing there), and says where."""
        precision = precision or name.split()[-1]
        n = self.opts.gate_images(precision)
        got = parity.backend_detections(backend, self.canvases[:n])
        result = parity.measure(self.ref[:n], got, self.names[:n])
        checked = Checked(result)
        accuracy = None
        if precision == "int8" and self.truth is not None:
            checked.accuracy = self.accuracy(got)
            checked.eager_accuracy = self.accuracy(self.ref[:n])
            accuracy = (checked.accuracy, checked.eager_accuracy, self.opts.int8_max_accuracy_drop)
        elif precision == "int8":
            _log(f"parity {name}: the images have no labels; accuracy not checked")
        min_agreement = self.opts.min_agreement(precision)
        try:
            _gate(name, result, precision, self.score_floor, min_agreement, accuracy)
        except ExportFailed as e:
            _, bad = result.verdict(precision, self.score_floor, min_agreement)
            where = self.pictures(name, {d.name for d in bad}, got)
            raise ExportFailed(f"{e}\npictures (eager left, {name} right): {where}") from None
        return checked

    def accuracy(self, dets: list[Detections]) -> float:
        """Whole-number accuracy as the reader decodes: boxes back in image pixels."""
        hits = [
            Detections(boxes_from_canvas(d.boxes, scale, size), d.scores, d.digits).number() == t
            for d, scale, size, t in zip(dets, self.scales, self.sizes, self.truth, strict=False)
        ]
        return sum(hits) / max(len(hits), 1)

    def pictures(self, name: str, failing: set[str], got: list) -> Path:
        where = Path(tempfile.mkdtemp(prefix="digit-export-parity-"))
        items = [
            (n, self.canvases[i].transpose(1, 2, 0), self.ref[i], got[i])
            for i, n in enumerate(self.names[: len(got)])
            if n in failing
        ]
        write_comparisons(where, items, ("PyTorch eager", name), DEFAULT_THRESHOLD)
        return where


def _install(tmp: Path, out: Path, card: ModelCard) -> None:
    """Move the gated files from `tmp` into `out`, drop files of an older export, write the card.

    model.json goes first out and last in: between the two, a reader finds no card and refuses.
    The int8 calibration cache travels with model.int8.onnx.
    """
    (out / CARD_NAME).unlink(missing_ok=True)
    extras = [CALIB_CACHE] if FILES["int8"][0] in card.files else []
    for names in FILES.values():
        for name in names:
            if name not in card.files:
                (out / name).unlink(missing_ok=True)
    if not extras:
        (out / CALIB_CACHE).unlink(missing_ok=True)
    for name in [*card.files, *extras]:
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
                checked = gate.check(f"TensorRT {precision}", backend)
            finally:
                backend.close()
            built[engine_name] = (precision, onnx_name, checked)
    except Exception as e:  # UserError/ExportFailed, or TensorRT's own RuntimeErrors
        for name in list(built) + [FILES[p][1] for p in precisions]:
            (tmp / name).unlink(missing_ok=True)
        if opts.engine:
            raise
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return f"TensorRT engine not written: {first}"
    card.engine_batch = {"min": opts.profile.min, "opt": opts.profile.opt, "max": opts.profile.max}
    for engine_name, (precision, onnx_name, checked) in built.items():
        figures = checked.figures() if precision == "int8" else {}
        card.add_file(
            tmp / engine_name,
            precision,
            source=onnx_name,
            parity=checked.summary(),
            **figures,
            **entry,
        )
    return f"built with TensorRT {found.version} on {found.gpu}"
