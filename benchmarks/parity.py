"""`digit-bench parity`: every exported form against PyTorch eager, image by image.

Each form reads the images through the deployed path (runtime.Reader: decode, letterbox,
graph, threshold, sort) and is compared with the eager model evaluated as training evaluates
it (train.evaluate), both in original-image pixels: whole-number accuracy and COCO mAP against
the labels, the share of images whose number equals PyTorch's, and matched-box and score
deviations (runtime/agreement.py's matching). A split without labels (HW2's test/ has no test.json)
gives the agreement and deviations only: accuracy and mAP are None ("n/a"). The gate follows
MMDeploy's regression idea but per image: an fp32 form must agree with PyTorch on every image
(numbers identical, boxes within 0.5 px, scores within 1e-3); an fp16 form on at least 99 % of
the numbers, a bf16 form (OpenVINO) too; an int8 form on at least 98 %, and (with labels) its
accuracy at most 1 point below PyTorch's: runtime.contract's rule, the export gate's. An int8
graph runs as the reader runs it: on ONNX Runtime's CPU provider, in its CPU form.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from digit_reader.benchmarks.forms import Candidate, exported_forms
from digit_reader.benchmarks.machine import describe_machine, machine
from digit_reader.benchmarks.report import markdown_table, write
from digit_reader.runtime.agreement import describe, measure, prove_ties
from digit_reader.runtime.console import err
from digit_reader.runtime.contract import (
    BOX_TOL_PX,
    CARD_NAME,
    EAGER,
    PRECISIONS,
    SCORE_TOL,
    parity_rule,
    resolve_device,
    verdict,
)
from digit_reader.runtime.draw import write_comparisons
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.modelcard import ModelCard
from digit_reader.runtime.reader import Reader
from digit_reader.train import checkpoint, config, evaluate
from digit_reader.train.data.hw2 import load_split
from digit_reader.train.eager import fp32_reference, without_nms

HEADERS = [
    "form",
    "status",
    "accuracy",
    "mAP@[.5:.95]",
    "same number as PyTorch %",
    "box dev max px",
    "box dev mean px",
    "score dev max",
    "size MB",
]


NOT_SCORED = {"accuracy": None, "map": None, "map50": None}


def run(
    run_dir: Path,
    export_dir: Path,
    data: Path,
    split: str,
    limit: int | None,
    device: str,
    pictures: Path | None = None,
):
    """The parity result; with `pictures`, also one PNG per image and form where the form's
    number differs from PyTorch's, in pictures/<form>/ (PyTorch left, the form right)."""
    device = resolve_device(device, torch.cuda.is_available())
    samples = load_split(data, split)[:limit]
    if not samples:
        raise UserError(f"{data}: split {split!r} has no images", code=2)
    # without {split}.json load_split lists the images with no boxes: nothing to score against
    labelled = (data / f"{split}.json").is_file()
    ckpt, reference = _reference(run_dir, export_dir, samples, labelled, device)
    eager = {"form": EAGER.label, "status": "reference", **reference.scores(reference.dets)}
    rows = [eager | {"same_as_pytorch": 1.0, "size_mb": ckpt.stat().st_size / 1e6}]
    for candidate in exported_forms(export_dir, device):
        row = {"form": candidate.form.label, "precision": candidate.form.precision}
        if candidate.skip:
            rows.append(row | {"status": f"skipped: {candidate.skip}"})
            err(f"parity: {candidate.form.label} skipped: {candidate.skip}")
            continue
        rows.append(row | _form_row(candidate, device, reference, eager["accuracy"], pictures))
    return {
        "benchmark": "parity",
        "run": str(ckpt),
        "export": str(export_dir),
        "data": str(data),
        "split": split,
        "labelled": labelled,
        "images": len(samples),
        "device": device,
        "rules": {p: parity_rule(p).describe() for p in PRECISIONS},
        "rows": rows,
        "passed": all(r["status"] != "FAIL" for r in rows),
        "machine": machine(),
    }


@dataclass
class Reference:
    """The eager model on the split, as training evaluates it (original-image pixels)."""

    model: object
    cfg: object
    samples: list
    labelled: bool
    dets: list
    device: str

    def scores(self, dets) -> dict:
        """Accuracy and mAP against the labels (None without labels)."""
        return evaluate.metrics(dets, self.samples) if self.labelled else NOT_SCORED

    def predict(self, samples) -> list:
        tcfg = config.TrainConfig(amp=False)
        device, cfg = torch.device(self.device), self.cfg
        return evaluate.predict(self.model, samples, cfg.canvas, tcfg, device, sharpen=cfg.sharpen)

    def before_nms(self, indices: list[int]) -> list:
        """The eager model's candidates before its final NMS on these images: the evidence
        of a score tie broken the other way (runtime/agreement.py)."""
        with without_nms(self.model):
            return self.predict([self.samples[i] for i in indices])


def _reference(run_dir: Path, export_dir: Path, samples, labelled: bool, device: str):
    """(the checkpoint, the eager model's Reference on the samples)."""
    ckpt = checkpoint.checkpoint_path(run_dir)
    fp32_reference()  # no TF32 in the eager reference (nor in ORT's CUDA provider)
    model, cfg = checkpoint.load_model(ckpt, device)
    card = ModelCard.load(export_dir / CARD_NAME)
    if tuple(card.canvas) != tuple(cfg.canvas):
        raise UserError(
            f"{export_dir} was exported at canvas {card.canvas}, {ckpt} uses {cfg.canvas}"
        )
    err(f"parity: PyTorch eager on {len(samples)} images")
    reference = Reference(model, cfg, samples, labelled, [], device)
    reference.dets = reference.predict(samples)
    return ckpt, reference


def _form_row(c: Candidate, device: str, ref: Reference, eager_accuracy, pictures) -> dict:
    """One form read through the deployed path (runtime.Reader), held to its rule."""
    err(f"parity: {c.form.label} ({c.path.name})")
    reader = Reader(c.path, device=device, engine=c.form.engine, precision=c.form.precision)
    try:
        dets = [p.detections for p in reader.read([s.path for s in ref.samples])]
    finally:
        reader.close()
    result = measure(ref.dets, dets, [s.path.name for s in ref.samples])
    if c.form.precision == "fp32":
        result = prove_ties(result, ref.dets, dets, ref.before_nms, BOX_TOL_PX, SCORE_TOL)
    scored = ref.scores(dets)
    rule = parity_rule(c.form.precision)
    v = verdict(rule, result, ref.cfg.box_score_thresh, scored["accuracy"], eager_accuracy)
    drawn = _pictures(pictures, c.form.label, ref.samples, ref.dets, dets, reader.threshold)
    return (
        {"status": "pass" if v.passed else "FAIL"}
        | scored
        | {
            "same_as_pytorch": result.agreement,
            "box_dev_max": result.max_box_dev,
            "box_dev_mean": result.mean_box_dev,
            "score_dev_max": result.max_score_dev,
            "size_mb": _size(c.path) / 1e6,
            "disagreements": [describe(d) for d in v.bad[:50]],
            "ties": result.ties(BOX_TOL_PX),
            "pictures": [str(p.relative_to(pictures.parent)) for p in drawn],
        }
    )


def _size(path: Path) -> int:
    """A model's bytes on disk, an OpenVINO IR's weights included."""
    weights = path.with_suffix(".bin") if path.suffix == ".xml" else None
    return path.stat().st_size + (weights.stat().st_size if weights else 0)


def _pictures(where: Path | None, form: str, samples, ref, dets, threshold: float) -> list[Path]:
    """Side-by-side drawings of the images where `form` reads another number than PyTorch."""
    if where is None:
        return []
    differ = [
        (s.path.name, s.path, r, d)
        for s, r, d in zip(samples, ref, dets, strict=True)
        if r.number(threshold) != d.number(threshold)
    ]
    return write_comparisons(where / form.replace(" ", "-"), differ, ("PyTorch", form), threshold)


def _score(row: dict, key: str):
    """A figure, "n/a" where the split has no labels, None (a dash) where the form did not run."""
    return "n/a" if key in row and row[key] is None else row.get(key)


def markdown(result: dict) -> str:
    table = [
        [
            r["form"],
            r["status"],
            _score(r, "accuracy"),
            _score(r, "map"),
            None if "same_as_pytorch" not in r else round(100 * r["same_as_pytorch"], 2),
            r.get("box_dev_max"),
            r.get("box_dev_mean"),
            r.get("score_dev_max"),
            None if "size_mb" not in r else round(r["size_mb"], 2),
        ]
        for r in result["rows"]
    ]
    m = result["machine"]
    head = (
        f"Parity on {result['images']} {result['split']} images of {result['data']} "
        f"({result['device']}; {describe_machine(m)}). Boxes in original-image pixels"
        + ("" if result.get("labelled", True) else "; no labels: agreement with PyTorch only")
        + f". {'PASS' if result['passed'] else 'FAIL'}."
    )
    text = head + "\n\n" + markdown_table(HEADERS, table)
    drawn = [(r["form"], p) for r in result["rows"] for p in r.get("pictures", [])]
    if drawn:
        text += "\n\nImages read as another number than PyTorch's (PyTorch left, the form right):\n"
        text += "\n".join(f"- {form}: [{Path(p).name}]({p})" for form, p in drawn)
    tied = [(r["form"], name) for r in result["rows"] for name in r.get("ties", [])]
    if tied:
        text += (
            f"\n\nBox deviations over {BOX_TOL_PX} px that are a proven NMS tie (two eager "
            "candidates before NMS within 1e-6 in score; the form kept the other):\n"
        )
        text += "\n".join(f"- {form}: {name}" for form, name in tied)
    return text


def main(run_dir, export_dir, data, split, limit, device, out) -> int:
    out = out or export_dir
    pictures = out / "parity"
    if pictures.is_dir():  # pictures of an earlier run would pass for this one's
        shutil.rmtree(pictures)
    result = run(run_dir, export_dir, data, split, limit, device, pictures)
    md = markdown(result)
    js, mdp = write(out, "parity", result, md)
    print(md)
    for r in result["rows"]:
        for line in r.get("disagreements", [])[:10]:
            err(f"{r['form']}: {line}")
    err(f"parity: {'passed' if result['passed'] else 'FAILED'}; wrote {js} and {mdp}")
    return 0 if result["passed"] else 1
