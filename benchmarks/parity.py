"""`digit-bench parity`: every exported form against PyTorch eager, image by image.

Each form reads the images through the deployed path (runtime.Reader: decode, letterbox,
graph, threshold, sort) and is compared with the eager model evaluated as training evaluates
it (train.evaluate), both in original-image pixels: whole-number accuracy and COCO mAP against
the labels, the share of images whose number equals PyTorch's, and matched-box and score
deviations (export.parity's matching). A split without labels (HW2's test/ has no test.json)
gives the agreement and deviations only: accuracy and mAP are None ("n/a"). The gate follows
MMDeploy's regression idea but per image: an fp32 form must agree with PyTorch on every image
(numbers identical, boxes within 0.5 px, scores within 1e-3); an fp16 form on at least 99 % of
the numbers; an int8 form on at least 98 %, and (with labels) its accuracy at most 1 point
below PyTorch's. An int8 graph runs as the reader runs it: on the CPU, in its CPU form.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from digit_reader.benchmarks.forms import exported_forms
from digit_reader.benchmarks.machine import machine
from digit_reader.benchmarks.report import markdown_table, write
from digit_reader.export import parity
from digit_reader.export.defaults import (
    BOX_TOL_PX,
    FP16_MIN_AGREEMENT,
    INT8_MAX_ACCURACY_DROP,
    INT8_MIN_AGREEMENT,
    SCORE_TOL,
)
from digit_reader.runtime.draw import write_comparisons
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.modelcard import CARD_NAME, ModelCard
from digit_reader.runtime.reader import Reader
from digit_reader.train import checkpoint, config, evaluate
from digit_reader.train.data.hw2 import load_split

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


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
    samples = load_split(data, split)[:limit]
    if not samples:
        raise UserError(f"{data}: split {split!r} has no images", code=2)
    # without {split}.json load_split lists the images with no boxes: nothing to score against
    labelled = (data / f"{split}.json").is_file()

    def scores(dets) -> dict:
        return evaluate.metrics(dets, samples) if labelled else NOT_SCORED

    ckpt = checkpoint.checkpoint_path(run_dir)
    parity.fp32_reference()  # no TF32 in the eager reference (nor in ORT's CUDA provider)
    model, cfg = checkpoint.load_model(ckpt, device)
    card = ModelCard.load(export_dir / CARD_NAME)
    if tuple(card.canvas) != tuple(cfg.canvas):
        raise UserError(
            f"{export_dir} was exported at canvas {card.canvas}, {ckpt} uses {cfg.canvas}"
        )
    tcfg = config.TrainConfig(sharpen=bool(cfg.extra.get("sharpen")), amp=False)
    _log(f"parity: PyTorch eager on {len(samples)} {split} images")
    ref = evaluate.predict(model, samples, cfg.canvas, tcfg, torch.device(device))
    names = [s.path.name for s in samples]
    rows = [
        {
            "form": "PyTorch eager",
            "status": "reference",
            **scores(ref),
            "same_as_pytorch": 1.0,
            "size_mb": ckpt.stat().st_size / 1e6,
        }
    ]
    for form in exported_forms(export_dir, device):
        row = {"form": form.name, "precision": form.precision}
        if form.skip:
            rows.append(row | {"status": f"skipped: {form.skip}"})
            _log(f"parity: {form.name} skipped: {form.skip}")
            continue
        _log(f"parity: {form.name} ({form.path.name})")
        reader = Reader(form.path, device=device)
        dets = [p.detections for p in reader.read([s.path for s in samples])]
        result = parity.measure(ref, dets, names)
        passed, bad = result.verdict(form.precision, cfg.box_score_thresh)
        scored = scores(dets)
        if form.precision == "int8" and labelled:
            passed &= scored["accuracy"] >= rows[0]["accuracy"] - INT8_MAX_ACCURACY_DROP - 1e-9
        drawn = _pictures(pictures, form.name, samples, ref, dets, reader.threshold)
        rows.append(
            row
            | {"status": "pass" if passed else "FAIL"}
            | scored
            | {
                "same_as_pytorch": result.agreement,
                "box_dev_max": result.max_box_dev,
                "box_dev_mean": result.mean_box_dev,
                "score_dev_max": result.max_score_dev,
                "size_mb": form.path.stat().st_size / 1e6,
                "disagreements": [parity.describe(d) for d in bad[:50]],
                "pictures": [str(p.relative_to(pictures.parent)) for p in drawn],
            }
        )
    passed = all(r["status"] != "FAIL" for r in rows)
    return {
        "benchmark": "parity",
        "run": str(ckpt),
        "export": str(export_dir),
        "data": str(data),
        "split": split,
        "labelled": labelled,
        "images": len(samples),
        "device": device,
        "rules": {
            "fp32": f"numbers identical on every image, boxes within {BOX_TOL_PX} px, scores "
            f"within {SCORE_TOL}",
            "fp16": f"numbers identical on at least {100 * FP16_MIN_AGREEMENT:.0f} % of images",
            "int8": f"numbers identical on at least {100 * INT8_MIN_AGREEMENT:.0f} % of images, "
            f"accuracy at most {100 * INT8_MAX_ACCURACY_DROP:g} point(s) below PyTorch's",
        },
        "rows": rows,
        "passed": passed,
        "machine": machine(),
    }


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
        f"({result['device']}; {m['cpu']}, {m['cores']} cores"
        + (f", {m['gpu']}" if m["gpu"] else "")
        + "). Boxes in original-image pixels"
        + ("" if result.get("labelled", True) else "; no labels: agreement with PyTorch only")
        + f". {'PASS' if result['passed'] else 'FAIL'}."
    )
    text = head + "\n\n" + markdown_table(HEADERS, table)
    drawn = [(r["form"], p) for r in result["rows"] for p in r.get("pictures", [])]
    if drawn:
        text += "\n\nImages read as another number than PyTorch's (PyTorch left, the form right):\n"
        text += "\n".join(f"- {form}: [{Path(p).name}]({p})" for form, p in drawn)
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
            _log(f"{r['form']}: {line}")
    _log(f"parity: {'passed' if result['passed'] else 'FAILED'}; wrote {js} and {mdp}")
    return 0 if result["passed"] else 1
