"""A Triton model config as digit-reader writes and checks it: the model card in its
`parameters`, the graph's tensors in its inputs/outputs.

`digit-export --triton` (export/triton_repo.py) writes the parameters with `card_parameters` and
checks each config it writes with `check_config`; `digit-read --model triton://...`
(runtime/triton_backend.py) checks the config the server returns with the same function and reads
its card back with `card_from_config`. The tensors a config must state come from
runtime.contract's graph I/O, so both sides follow the model's contract.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from digit_reader.runtime.contract import INPUT_NAME, OUTPUT_NAMES, graph_io
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.modelcard import FORMAT, ModelCard

# The model card in a config's `parameters` (all strings).
PARAM_FORMAT = "digit_reader.format"  # model.json's format, digit-reader/model@1
PARAM_CANVAS = "digit_reader.canvas"  # "HxW", the letterbox canvas
PARAM_DIGITS = "digit_reader.digits"  # JSON list: label -> digit
PARAM_THRESHOLD = "digit_reader.threshold"
PARAM_SHARPEN = "digit_reader.sharpen"  # "true": the reader sharpens before letterboxing
PARAM_MAX_DETECTIONS = "digit_reader.max_detections"  # K of the outputs
PARAM_FILE = "digit_reader.file"  # the export's file served (model.onnx, model.fp16.engine, ...)
PARAM_PRECISION = "digit_reader.precision"
PARAM_SHA256 = "digit_reader.sha256"  # of that file, as in model.json
PARAM_CHECKPOINT_SHA256 = "digit_reader.checkpoint_sha256"  # the checkpoint it was exported from
PARAMETER_KEYS = (
    PARAM_FORMAT,
    PARAM_CANVAS,
    PARAM_DIGITS,
    PARAM_THRESHOLD,
    PARAM_SHARPEN,
    PARAM_MAX_DETECTIONS,
    PARAM_FILE,
    PARAM_PRECISION,
    PARAM_SHA256,
)

# model.json's dtype names -> Triton's data types
TRITON_TYPES = {
    "uint8": "TYPE_UINT8",
    "int8": "TYPE_INT8",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "bool": "TYPE_BOOL",
}


def contract_io(canvas: tuple[int, int], k: int) -> dict[str, tuple[str, list[int]]]:
    """name -> (Triton data type, dims without the batch) of runtime.contract's graph I/O.

    The graph's num_dets is [N], one scalar per image; Triton wants at least one dim per item,
    so a config states it as dims [1] with `reshape: { shape: [] }`.
    """
    inputs, outputs = graph_io(canvas, k)
    return {t.name: (TRITON_TYPES[t.dtype], list(t.dims) or [1]) for t in (*inputs, *outputs)}


def card_parameters(card: ModelCard, file_name: str) -> dict[str, str]:
    """The `parameters` a Triton config of `file_name` (one file of `card`) carries."""
    entry = card.files[file_name]
    h, w = card.canvas
    params = {
        PARAM_FORMAT: card.format,
        PARAM_CANVAS: f"{h}x{w}",
        PARAM_DIGITS: json.dumps([str(d) for d in card.digits]),
        PARAM_THRESHOLD: repr(float(card.threshold)),
        PARAM_SHARPEN: "true" if card.sharpen else "false",
        PARAM_MAX_DETECTIONS: str(int(card.max_detections)),
        PARAM_FILE: file_name,
        PARAM_PRECISION: str(entry.get("precision", "fp32")),
        PARAM_SHA256: str(entry.get("sha256", "")),
    }
    if card.source_checkpoint.get("sha256"):
        params[PARAM_CHECKPOINT_SHA256] = card.source_checkpoint["sha256"]
    return params


def parameters_of(config: dict) -> dict[str, str]:
    """A config's `parameters` as plain strings (Triton's JSON wraps each in string_value)."""
    out = {}
    for key, value in (config.get("parameters") or {}).items():
        out[key] = value.get("string_value", "") if isinstance(value, dict) else str(value)
    return out


@dataclass(frozen=True)
class _Tensor:
    data_type: str
    dims: list[int]


def _tensors(config: dict, field: str) -> dict[str, _Tensor]:
    # gRPC's JSON renders the int64 dims as strings, HTTP's as numbers
    return {
        t.get("name", ""): _Tensor(t.get("data_type", "?"), [int(d) for d in t.get("dims", [])])
        for t in config.get(field) or []
    }


def _card_values(params: dict[str, str]) -> tuple[dict, list[str]]:
    """The card's values parsed from the parameters, and what is wrong with them."""
    values, problems = {}, []
    try:
        h, w = (int(v) for v in params[PARAM_CANVAS].lower().split("x"))
        values["canvas"] = (h, w)
    except ValueError:
        problems.append(f"{PARAM_CANVAS} is {params[PARAM_CANVAS]!r}, not HxW")
    try:
        values["max_detections"] = int(params[PARAM_MAX_DETECTIONS])
    except ValueError:
        problems.append(f"{PARAM_MAX_DETECTIONS} is {params[PARAM_MAX_DETECTIONS]!r}")
    try:
        digits = json.loads(params[PARAM_DIGITS])
        if not (isinstance(digits, list) and len(digits) == 10):
            raise ValueError
        values["digits"] = [str(d) for d in digits]
    except ValueError:
        problems.append(f"{PARAM_DIGITS} must be a JSON list of the 10 digits")
    try:
        values["threshold"] = float(params[PARAM_THRESHOLD])
        if not 0 <= values["threshold"] <= 1:
            raise ValueError
    except ValueError:
        problems.append(f"{PARAM_THRESHOLD} is {params[PARAM_THRESHOLD]!r}, not in 0..1")
    if params[PARAM_SHARPEN] not in ("true", "false"):
        problems.append(f"{PARAM_SHARPEN} is {params[PARAM_SHARPEN]!r}, not true or false")
    values["sharpen"] = params[PARAM_SHARPEN] == "true"
    return values, problems


def config_problems(config: dict, expected: ModelCard | None = None) -> list[str]:
    """Every way `config` (Triton's JSON form of a model config, as the HTTP API returns it) is
    not a digit-reader model the reader can use, or differs from `expected`; [] when it is."""
    params = parameters_of(config)
    missing = [k for k in PARAMETER_KEYS if k not in params]
    if len(missing) == len(PARAMETER_KEYS):
        return [
            "not a digit-reader model: its config has no digit_reader.* parameters "
            "(`digit-export RUN --triton REPO` writes a repository with them)"
        ]
    if missing:
        return [f"its config lacks the parameters {', '.join(missing)}"]
    problems = []
    if params[PARAM_FORMAT] != FORMAT:
        problems.append(f"{PARAM_FORMAT} is {params[PARAM_FORMAT]!r}, this reader reads {FORMAT}")
    values, bad = _card_values(params)
    problems += bad
    try:
        max_batch = int(config.get("max_batch_size", 0))
    except (TypeError, ValueError):
        max_batch = 0
    if max_batch < 1:
        problems.append(
            f"max_batch_size is {config.get('max_batch_size', 0)}, want >= 1 (batching)"
        )
    inputs, outputs = _tensors(config, "input"), _tensors(config, "output")
    if sorted(inputs) != [INPUT_NAME]:
        problems.append(f"inputs are {sorted(inputs)}, want [{INPUT_NAME!r}]")
    if sorted(outputs) != sorted(OUTPUT_NAMES):
        problems.append(f"outputs are {sorted(outputs)}, want {sorted(OUTPUT_NAMES)}")
    if "canvas" in values and "max_detections" in values:
        canvas, k = values["canvas"], values["max_detections"]
        for name, (data_type, dims) in contract_io(canvas, k).items():
            got = inputs.get(name) or outputs.get(name)
            if got is None:
                continue
            if got.data_type != data_type:
                problems.append(f"{name} is {got.data_type}, want {data_type}")
            if got.dims == dims:
                continue
            if name == INPUT_NAME:
                what = f"{canvas[0]}x{canvas[1]}"
                problems.append(
                    f"input {name} has dims {got.dims}, but its card's canvas is {what}"
                )
            else:
                problems.append(f"output {name} has dims {got.dims}, want {dims} (K = {k})")
    if expected is not None:
        problems += _differences(values, params, expected)
    return problems


def _differences(values: dict, params: dict[str, str], expected: ModelCard) -> list[str]:
    out = []
    for key in ("canvas", "max_detections", "digits", "threshold", "sharpen"):
        want = getattr(expected, key)
        want = tuple(want) if key == "canvas" else want
        if key in values and values[key] != want:
            out.append(f"{key} is {values[key]!r} on the server, {want!r} expected")
    entry = expected.files.get(params[PARAM_FILE])
    if entry is None:
        out.append(f"serves {params[PARAM_FILE]}, which the expected card does not list")
    elif entry.get("sha256") and entry["sha256"] != params[PARAM_SHA256]:
        out.append(f"serves a {params[PARAM_FILE]} whose sha256 differs from the expected one")
    return out


def check_config(config: dict, expected: ModelCard | None = None, where: str = "") -> None:
    """Raise UserError (exit 2), one line naming every mismatch, unless config_problems is []."""
    problems = config_problems(config, expected)
    if problems:
        name = where or config.get("name", "model")
        raise UserError(f"{name}: refused: " + "; ".join(problems), code=2)


def card_from_config(config: dict, where: str = "") -> ModelCard:
    """The ModelCard a checked digit-reader config carries; files = {served file: entry}."""
    check_config(config, where=where)
    params = parameters_of(config)
    values, _ = _card_values(params)
    h, w = values["canvas"]
    k = values["max_detections"]
    entry = {"precision": params[PARAM_PRECISION], "sha256": params[PARAM_SHA256]}
    return ModelCard.for_graph(
        (h, w),
        k,
        digits=values["digits"],
        threshold=values["threshold"],
        sharpen=values["sharpen"],
        files={params[PARAM_FILE]: entry},
        source_checkpoint={"sha256": params[PARAM_CHECKPOINT_SHA256]}
        if PARAM_CHECKPOINT_SHA256 in params
        else {},
    )
