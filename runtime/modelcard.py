"""model.json: everything a reader needs to use an exported model, written beside the model files.

It carries the canvas (the preprocessing contract), the digit mapping, the default
threshold, the graph's input/output names and one entry per model file with its
precision and checksum, so a reader can refuse a file that does not belong to it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from digit_reader.runtime import atomic
from digit_reader.runtime.contract import CARD_NAME, file_kind, graph_io, ir_weights
from digit_reader.runtime.decode import DEFAULT_THRESHOLD
from digit_reader.runtime.errors import UserError

FORMAT = "digit-reader/model@1"


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class ModelCard:
    canvas: tuple[int, int]  # (H, W) of the letterbox canvas the graph takes
    max_detections: int  # K, the fixed size of the graph's outputs
    digits: list[str] = field(default_factory=lambda: [str(d) for d in range(10)])
    threshold: float = DEFAULT_THRESHOLD
    sharpen: bool = False  # trained on sharpened inputs: the reader sharpens before letterboxing
    inputs: list[dict] = field(default_factory=list)  # [{name, dtype, shape}]
    outputs: list[dict] = field(default_factory=list)
    files: dict[str, dict] = field(default_factory=dict)  # name -> {precision, sha256, bytes, ...}
    opset: int | None = None
    source_checkpoint: dict = field(default_factory=dict)  # {path, sha256}
    versions: dict = field(default_factory=dict)
    engine_batch: dict | None = None  # {min, opt, max} of the TensorRT profile
    engine_note: str | None = None  # why no TensorRT engine was written, when none was
    format: str = FORMAT

    @classmethod
    def for_graph(cls, canvas: tuple[int, int], max_detections: int, **fields) -> ModelCard:
        """A card whose inputs/outputs are runtime.contract's graph I/O for this canvas and K."""
        inputs, outputs = graph_io(canvas, max_detections)
        return cls(
            canvas=tuple(canvas),
            max_detections=max_detections,
            inputs=[t.card_entry() for t in inputs],
            outputs=[t.card_entry() for t in outputs],
            **fields,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["canvas"] = list(self.canvas)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = CARD_NAME) -> ModelCard:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise UserError(f"{where}: not a digit-reader model card (format {got!r})")
        known = set(cls.__dataclass_fields__)
        try:
            card = cls(**{k: v for k, v in d.items() if k in known})
            h, w = (int(v) for v in card.canvas)
        except (TypeError, ValueError) as e:
            raise UserError(f"{where}: malformed model card ({e})") from None
        card.canvas = (h, w)
        if len(card.digits) != 10:
            raise UserError(f"{where}: 'digits' must map the 10 labels, got {len(card.digits)}")
        return card

    def save(self, path: str | Path) -> None:
        atomic.write_json(path, self.to_dict(), indent=2)

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such model card", code=2)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: not valid JSON ({e})", code=2) from None
        return cls.from_dict(d, where=str(path))

    def add_file(self, path: str | Path, precision: str, **extra) -> None:
        """Enter a model file with its precision, checksum and size; an OpenVINO IR (.xml)
        also with its weights file (.bin), which must travel with it."""
        path = Path(path)
        self.files[path.name] = {"precision": precision, **_checksum(path), **extra}
        if file_kind(path.name) == "ir":
            weights = path.parent / ir_weights(path.name)
            self.files[path.name]["weights"] = {"file": weights.name, **_checksum(weights)}


def _checksum(path: Path) -> dict:
    return {"sha256": sha256_of(path), "bytes": path.stat().st_size}


def _matches(path: Path, entry: dict, check_sha256: bool) -> bool:
    if not path.is_file() or entry.get("bytes") not in (None, path.stat().st_size):
        return False
    return not (check_sha256 and entry.get("sha256") and sha256_of(path) != entry["sha256"])


def card_for(model_path: str | Path, check_sha256: bool = True) -> tuple[ModelCard, dict]:
    """The card beside `model_path` and its entry for that file; a clear error if they disagree."""
    model_path = Path(model_path)
    card_path = model_path.parent / CARD_NAME
    if not card_path.is_file():
        raise UserError(
            f"{model_path}: no {CARD_NAME} beside it; `digit-export` writes the model files "
            "together with their model.json, keep them in one directory",
            code=2,
        )
    card = ModelCard.load(card_path)
    entry = card.files.get(model_path.name)
    if entry is None:
        raise UserError(
            f"{model_path}: not listed in {card_path} (it lists {sorted(card.files)})", code=2
        )
    weights = entry.get("weights")
    if not _matches(model_path, entry, check_sha256) or (
        weights and not _matches(model_path.parent / weights["file"], weights, check_sha256)
    ):
        raise UserError(
            f"{model_path}: does not match its entry in {card_path} (size or sha256 differ, or "
            "its weights file is missing); "
            "re-export or copy the model.json that was written with it",
            code=2,
        )
    return card, entry
