"""A Triton Inference Server model repository from an export (`digit-export ... --triton REPO`).

    REPO/
      README.md                  what is served, from which export, how to serve and read it
      digit_reader/              config.pbtxt, 1/model.onnx   model.onnx        onnxruntime_onnx
      digit_reader_fp16/         config.pbtxt, 1/model.onnx   model.fp16.onnx   (--fp16)
      digit_reader_int8/         config.pbtxt, 1/model.onnx   model.int8.onnx   (when exported)
      digit_reader_trt/          config.pbtxt, 1/model.plan   model.engine      tensorrt_plan
      digit_reader_trt_fp16/     config.pbtxt, 1/model.plan   model.fp16.engine (where built)

One model per file of the export's model.json. Each config states the graph's real tensor
names, types and dims (read from the ONNX file; for an engine, from the ONNX file it was built
from), batch excluded, with num_dets ([N] in the graph) as dims [1] + `reshape: { shape: [] }`;
max_batch_size = the export's max batch (for an engine at most its profile's max, which the
TensorRT backend enforces); dynamic batching with the profile's opt and max batch as preferred
sizes; one instance (KIND_AUTO for ONNX Runtime: the GPU where there is one, with TF32 off as
in the reader; KIND_GPU for a plan); and the model card in `parameters`
(runtime/triton_config.py `card_parameters`). Every config is checked with the reader's own
`check_config` before anything is written. Model files are copied atomically and their sha256
checked against model.json; each config.pbtxt goes first out and last in, as model.json does in
an export directory.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from digit_reader.export.tensorrt_engine import BatchProfile
from digit_reader.runtime import atomic
from digit_reader.runtime.console import err
from digit_reader.runtime.contract import ENGINE_SUFFIXES, file_kind
from digit_reader.runtime.errors import UserError
from digit_reader.runtime.modelcard import CARD_NAME, ModelCard, sha256_of
from digit_reader.runtime.triton_config import (
    PARAM_FORMAT,
    TRITON_TYPES,
    card_parameters,
    config_problems,
)

MODEL_NAME = "digit_reader"
VERSION = "1"
README = "README.md"
MAX_QUEUE_DELAY_US = 2000  # how long the dynamic batcher may hold a request to fill a batch
# Triton-side names of the served files (its defaults for each platform)
SERVED_FILE = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}
# fields rendered as bare enum names, and map fields, in protobuf text format
_ENUM_FIELDS = {"data_type", "kind"}
_MAP_FIELDS = {"parameters"}


def is_engine(file_name: str) -> bool:
    return Path(file_name).suffix in ENGINE_SUFFIXES


def model_name(file_name: str, precision: str) -> str:
    """digit_reader[_trt][_PRECISION]: model.onnx -> digit_reader, model.fp16.engine ->
    digit_reader_trt_fp16."""
    name = MODEL_NAME + ("_trt" if is_engine(file_name) else "")
    return name if precision == "fp32" else f"{name}_{precision}"


def graph_io(onnx_path: Path) -> tuple[list[tuple], list[tuple]]:
    """([(name, dtype, dims without batch)] of the inputs, same of the outputs) of an ONNX file.

    Raises UserError unless the first dim of every tensor is the (free) batch and the rest fixed.
    """
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}

    def tensors(values):
        out = []
        for v in values:
            if v.name in initializers:
                continue
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            if not dims or dims[0] not in (None, 0) or any(not d for d in dims[1:]):
                raise UserError(
                    f"{onnx_path.name}: {v.name} has shape {dims}; a Triton config needs a free "
                    "batch dim first and fixed dims after it",
                    code=1,
                )
            out.append((v.name, tensor_dtype_to_np_dtype(t.elem_type).name, dims[1:]))
        return out

    return tensors(graph.input), tensors(graph.output)


def _card_io(card: ModelCard) -> tuple[list[tuple], list[tuple]]:
    def tensors(entries):
        return [(e["name"], e["dtype"], [int(d) for d in e["shape"][1:]]) for e in entries]

    return tensors(card.inputs), tensors(card.outputs)


def _tensor(name: str, dtype: str, dims: list[int]) -> dict:
    if dtype not in TRITON_TYPES:
        raise UserError(f"{name}: dtype {dtype} has no Triton data type here", code=1)
    t = {"name": name, "data_type": TRITON_TYPES[dtype], "dims": list(dims) or [1]}
    if not dims:  # one scalar per image ([N] in the graph): Triton wants rank >= 1 per item
        t["reshape"] = {"shape": []}
    return t


def batching(profile: BatchProfile, engine_batch: dict | None, engine: bool) -> tuple[int, list]:
    """(max_batch_size, preferred batch sizes) of one model."""
    opt, high = profile.opt, profile.max
    if engine and engine_batch:  # the TensorRT backend refuses more than the profile's max
        high = min(high, int(engine_batch["max"]))
        opt = int(engine_batch.get("opt", opt))
    # not the profile's min: a preferred size of 1 only tells the batcher not to wait
    return high, sorted({b for b in (opt, high) if 1 <= b <= high})


def model_config(
    card: ModelCard,
    file_name: str,
    io: tuple[list[tuple], list[tuple]],
    profile: BatchProfile,
) -> dict:
    """The config of the model serving `file_name`, in Triton's JSON form (as the HTTP API
    returns it); `to_pbtxt` renders it."""
    engine = is_engine(file_name)
    entry = card.files[file_name]
    max_batch, preferred = batching(profile, card.engine_batch, engine)
    inputs, outputs = io
    config = {
        "name": model_name(file_name, entry.get("precision", "fp32")),
        "platform": "tensorrt_plan" if engine else "onnxruntime_onnx",
        "max_batch_size": max_batch,
        "input": [_tensor(*t) for t in inputs],
        "output": [_tensor(*t) for t in outputs],
        "dynamic_batching": {
            "preferred_batch_size": preferred,
            "max_queue_delay_microseconds": MAX_QUEUE_DELAY_US,
        },
        "instance_group": [{"count": 1, "kind": "KIND_GPU" if engine else "KIND_AUTO"}],
        "version_policy": {"latest": {"num_versions": 1}},
    }
    if not engine:
        # on a GPU instance ONNX Runtime's CUDA provider, fp32 without TF32 as in the reader
        # (runtime/ort_backend.py); the ORT backend passes these keys to the provider as they are
        cuda = {"name": "cuda", "parameters": {"use_tf32": "0"}}
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [cuda]}}
    params = card_parameters(card, file_name)
    if engine:
        for key in ("tensorrt", "gpu", "compute_capability"):
            if entry.get(key):
                params[f"{MODEL_NAME}.{key}"] = str(entry[key])
    config["parameters"] = {k: {"string_value": v} for k, v in params.items()}
    return config


def to_pbtxt(config: dict, header: str = "") -> str:
    """Protobuf text format of a config in Triton's JSON form (inference.ModelConfig)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += _fields(config, 0)
    return "\n".join(lines) + "\n"


def _scalar(key: str, value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if key in _ENUM_FIELDS:
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _fields(message: dict, depth: int) -> list[str]:
    pad, lines = "  " * depth, []
    for key, value in message.items():
        if key in _MAP_FIELDS:
            for k, v in value.items():
                if isinstance(v, dict):  # a message of scalars, e.g. { string_value: "..." }
                    inner = " ".join(f"{f}: {_scalar(f, x)}" for f, x in v.items())
                    value = f"value {{ {inner} }}"
                else:
                    value = f"value: {_scalar('', v)}"
                lines.append(f"{pad}{key} {{ key: {_scalar('', k)} {value} }}")
        elif isinstance(value, dict):
            lines.append(f"{pad}{key} {{")
            lines += _fields(value, depth + 1)
            lines.append(f"{pad}}}")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append(f"{pad}{key} [")
            for i, item in enumerate(value):
                lines.append(f"{pad}  {{")
                lines += _fields(item, depth + 2)
                lines.append(f"{pad}  }}" + ("," if i < len(value) - 1 else ""))
            lines.append(f"{pad}]")
        elif isinstance(value, list):
            items = ", ".join(_scalar(key, v) for v in value)
            lines.append(f"{pad}{key}: [ {items} ]" if items else f"{pad}{key}: []")
        else:
            lines.append(f"{pad}{key}: {_scalar(key, value)}")
    return lines


def repository_plan(
    export_dir: Path, profile: BatchProfile | None = None
) -> tuple[ModelCard, list[tuple[str, str, dict]]]:
    """(card, [(model name, export file name, config)]) for every ONNX file and engine of the
    export (an OpenVINO IR is not served: Triton's OpenVINO backend reads the same graph as
    model.onnx); raises UserError if a config would not be one the reader accepts."""
    card = ModelCard.load(export_dir / CARD_NAME)
    profile = profile or BatchProfile()
    profile.validate()
    plan = []
    for file_name, entry in card.files.items():
        if file_kind(file_name) == "ir":
            continue
        source = entry.get("source", file_name) if is_engine(file_name) else file_name
        io = graph_io(export_dir / source) if (export_dir / source).is_file() else _card_io(card)
        config = model_config(card, file_name, io, profile)
        problems = config_problems(config, expected=card)
        if problems:
            raise UserError(
                f"{export_dir / file_name}: no Triton config the reader accepts: "
                + "; ".join(problems),
                code=1,
            )
        plan.append((config["name"], file_name, config))
    return card, plan


def write_repository(
    export_dir: Path,
    repo: Path,
    profile: BatchProfile | None = None,
    log: Callable[[str], None] = err,
) -> list[str]:
    """Write (or update) a Triton model repository at `repo` from the export in `export_dir`;
    returns the model names written. Earlier digit-reader models in `repo` that this export
    does not have are removed; anything else in `repo` is left alone."""
    export_dir, repo = Path(export_dir), Path(repo)
    card, plan = repository_plan(export_dir, profile)
    repo.mkdir(parents=True, exist_ok=True)
    header = (
        f"Written by digit-export from {export_dir.resolve() / CARD_NAME} ({card.format}).\n"
        "Re-export rather than edit: the reader checks these fields against its contract."
    )
    for name, file_name, config in plan:
        served = SERVED_FILE[config["platform"]]
        _install_model(repo / name, export_dir / file_name, served, card.files[file_name]["sha256"])
        atomic.write_text(repo / name / "config.pbtxt", to_pbtxt(config, header))
    written = [name for name, _, _ in plan]
    for old in sorted(repo.iterdir()):
        config = old / "config.pbtxt"
        if old.is_dir() and old.name not in written and old.name.startswith(MODEL_NAME):
            if config.is_file() and PARAM_FORMAT in config.read_text(encoding="utf-8"):
                shutil.rmtree(old)
                log(f"triton: removed {old.name}, which this export does not have")
    atomic.write_text(repo / README, readme(export_dir, repo, card, plan))
    return written


def _install_model(model_dir: Path, source: Path, served: str, sha256: str) -> None:
    """Copy `source` to model_dir/1/`served` atomically, its sha256 checked; the config goes
    first out (a half-updated model has no config, so a polling server does not load it)."""
    version = model_dir / VERSION
    version.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").unlink(missing_ok=True)
    for other in SERVED_FILE.values():
        if other != served:
            (version / other).unlink(missing_ok=True)
    with atomic.atomic_path(version / served) as tmp:
        shutil.copyfile(source, tmp)
        if sha256_of(tmp) != sha256:
            raise UserError(
                f"{source}: its sha256 differs from model.json's; re-export (or copy the "
                "model.json written with it)",
                code=1,
            )


def readme(export_dir: Path, repo: Path, card: ModelCard, plan: list) -> str:
    h, w = card.canvas
    rows = "\n".join(
        f"| {name} | {c['platform']} | {file_name} | {card.files[file_name]['precision']} | "
        f"{c['max_batch_size']} | {card.files[file_name]['sha256'][:16]}… |"
        for name, file_name, c in plan
    )
    return f"""# Triton model repository of a digit-reader export

Written by `digit-export` from `{export_dir.resolve()}` ({card.format}).
Canvas {h}x{w}, up to {card.max_detections} detections per image, threshold {card.threshold}.
Each model's config.pbtxt carries this model card in its `parameters` (digit_reader.*), which
`digit-read --model triton://...` reads and checks before it sends an image.

| model | platform | from | precision | max batch | sha256 |
|---|---|---|---|---|---|
{rows}

Serve it on a machine with an NVIDIA GPU (TensorRT plans load only with the TensorRT version and
GPU they were built for; the ONNX models run anywhere, on the GPU where there is one):

    docker run --gpus=1 --rm -p8000:8000 -p8001:8001 -p8002:8002 \\
        -v {repo.resolve()}:/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\
        tritonserver --model-repository=/models

or `tritonserver --model-repository={repo.resolve()}` where Triton is installed. Read with it:

    pip install 'digit-reader[triton]'
    digit-read IMAGES/ --model triton://HOST:8000/digit_reader > pred.csv        # HTTP
    digit-read IMAGES/ --model triton+grpc://HOST:8001/digit_reader > pred.csv   # gRPC
"""
