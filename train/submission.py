"""The HW2 submission of a trained run: best.pt on ROOT/test -> pred.json, pred.csv and
submission.zip in the run directory (the formats: runtime.submission)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

from digit_reader.runtime import atomic
from digit_reader.runtime.decode import Detections
from digit_reader.runtime.submission import coco_results, csv_text
from digit_reader.train import checkpoint, distributed
from digit_reader.train.data.hw2 import Sample, load_split
from digit_reader.train.evaluate import predict


def submit(run_dir: Path, data_root: Path, tcfg, device, info: distributed.DistInfo) -> dict | None:
    """Predict ROOT/test with RUN/best.pt (a shard per torchrun rank); rank 0 writes the files
    and returns {images, json, csv, zip}, the other ranks None."""
    test_s = load_split(data_root, "test")
    distributed.barrier(info)
    model, mcfg = checkpoint.load_model(run_dir, device)
    dets = predict(model, test_s, mcfg.canvas, tcfg, device, info, sharpen=mcfg.sharpen)
    if not info.main:
        return None
    paths = write_submission(run_dir, dets, test_s)
    return {"images": len(test_s), **paths}


def write_submission(out_dir: str | Path, dets: list[Detections], samples: list[Sample]) -> dict:
    """HW2 files: pred.json (all detections), pred.csv (every image), and both in a zip."""
    out_dir = Path(out_dir)
    results, rows = [], []
    for d, s in zip(dets, samples, strict=True):
        results += coco_results(s.image_id, d.boxes, d.scores, d.digits)
        rows.append((s.image_id, d.number()))
    pred_json = json.dumps(results)
    pred_csv = csv_text(rows)
    paths = {"json": out_dir / "pred.json", "csv": out_dir / "pred.csv"}
    atomic.write_text(paths["json"], pred_json + "\n")
    atomic.write_text(paths["csv"], pred_csv)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("pred.json", pred_json + "\n")
        z.writestr("pred.csv", pred_csv)
    paths["zip"] = out_dir / "submission.zip"
    atomic.write_bytes(paths["zip"], buf.getvalue())
    return {k: str(v) for k, v in paths.items()}
