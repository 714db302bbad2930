"""A Triton Inference Server as the reader's backend: `digit-read --model triton://HOST:PORT/MODEL`.

The reader keeps the preprocessing contract and the decoding rule (`Reader` letterboxes and
decodes here); the server only runs the graph. What that graph is comes from the model's config
on the server: its input/output names, types and dims, its max batch size, and the model card
that `digit-export --triton` writes into the config's `parameters` (canvas, digit mapping,
threshold, sharpen, the served file's sha256). A model whose config is not a digit-reader
model's, or whose inputs/outputs disagree with its own card, is refused with one line.

    triton://HOST[:PORT]/MODEL[/VERSION][?timeout=SECONDS]        HTTP, port 8000 by default
    triton+grpc://HOST[:PORT]/MODEL[/VERSION][?timeout=SECONDS]   gRPC, port 8001 by default

(`triton+http://` is `triton://`.) The timeout bounds every request, 60 s by default.

The parameter keys and the config check live here, once: export/triton_repo.py writes the
parameters with `card_parameters` and checks what it writes with `check_config`. tritonclient
(`pip install 'digit-reader[triton]'`) is imported inside functions only, so this module
imports without it, as every runtime module does.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import numpy as np

from digit_reader.runtime.errors import BackendError, UserError
from digit_reader.runtime.modelcard import FORMAT, INPUT_NAME, OUTPUT_NAMES, ModelCard

SCHEMES = {"triton": "http", "triton+http": "http", "triton+grpc": "grpc"}
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
DEFAULT_TIMEOUT_S = 60.0
TRITON_EXTRA = "pip install 'digit-reader[triton]'"
# After this many batches in a row lost to an unreachable or silent server, the remaining
# batches are not sent (each still named as failed): a hung server must not cost a timeout
# per batch for the rest of a 13,000-image run.
MAX_DEAD_BATCHES = 3

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
    """name -> (Triton data type, dims without the batch) the reader needs from the graph.

    The graph's num_dets is [N], one scalar per image; Triton wants at least one dim per item,
    so a config states it as dims [1] with `reshape: { shape: [] }`.
    """
    h, w = canvas
    return {
        INPUT_NAME: ("TYPE_UINT8", [3, h, w]),
        "num_dets": ("TYPE_INT32", [1]),
        "boxes": ("TYPE_FP32", [k, 4]),
        "scores": ("TYPE_FP32", [k]),
        "labels": ("TYPE_INT32", [k]),
    }


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
    return ModelCard(
        canvas=(h, w),
        max_detections=k,
        digits=values["digits"],
        threshold=values["threshold"],
        sharpen=values["sharpen"],
        inputs=[{"name": INPUT_NAME, "dtype": "uint8", "shape": ["batch", 3, h, w]}],
        outputs=[
            {"name": "num_dets", "dtype": "int32", "shape": ["batch"]},
            {"name": "boxes", "dtype": "float32", "shape": ["batch", k, 4]},
            {"name": "scores", "dtype": "float32", "shape": ["batch", k]},
            {"name": "labels", "dtype": "int32", "shape": ["batch", k]},
        ],
        files={params[PARAM_FILE]: entry},
        source_checkpoint={"sha256": params[PARAM_CHECKPOINT_SHA256]}
        if PARAM_CHECKPOINT_SHA256 in params
        else {},
    )


@dataclass(frozen=True)
class TritonTarget:
    """Where a model is served: what a triton:// URL says."""

    protocol: str  # "http" | "grpc"
    host: str
    port: int
    model: str
    version: str = ""  # "" lets the server choose (its version policy: the latest)
    timeout: float = DEFAULT_TIMEOUT_S

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def name(self) -> str:
        scheme = "triton" if self.protocol == "http" else "triton+grpc"
        return f"{scheme}://{self.address}/{self.model}" + (
            f"/{self.version}" if self.version else ""
        )

    def __str__(self) -> str:
        return self.name


def is_triton_url(model) -> bool:
    return isinstance(model, str) and re.match(r"^triton(\+\w+)?://", model, re.I) is not None


def parse_url(url: str) -> TritonTarget:
    """triton[+http|+grpc]://HOST[:PORT]/MODEL[/VERSION][?timeout=SECONDS]; UserError (2) else."""
    usage = "want triton://HOST:PORT/MODEL (HTTP) or triton+grpc://HOST:PORT/MODEL (gRPC)"
    parts = urlsplit(url)
    protocol = SCHEMES.get(parts.scheme.lower())
    if protocol is None:
        raise UserError(f"{url}: unknown scheme {parts.scheme}://; {usage}", code=2)
    try:
        port = parts.port or DEFAULT_PORTS[protocol]
    except ValueError:
        raise UserError(f"{url}: the port is not a number in 1..65535; {usage}", code=2) from None
    path = [p for p in parts.path.split("/") if p]
    if not parts.hostname or not 1 <= len(path) <= 2 or (len(path) == 2 and not path[1].isdigit()):
        raise UserError(f"{url}: {usage}, optionally /VERSION (a number)", code=2)
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"timeout"})
    if unknown:
        raise UserError(f"{url}: unknown option {unknown[0]!r} (only ?timeout=SECONDS)", code=2)
    timeout = DEFAULT_TIMEOUT_S
    if "timeout" in query:
        try:
            timeout = float(query["timeout"][-1])
            if not timeout > 0:
                raise ValueError
        except ValueError:
            raise UserError(f"{url}: timeout must be a number of seconds > 0", code=2) from None
    version = path[1] if len(path) == 2 else ""
    return TritonTarget(protocol, parts.hostname, port, path[0], version, timeout)


def import_tritonclient(protocol: str):
    try:
        if protocol == "grpc":
            import tritonclient.grpc as client
        else:
            import tritonclient.http as client
    except ImportError as e:
        raise UserError(
            f"tritonclient ({protocol}) is not installed: {TRITON_EXTRA} ({e})", code=2
        ) from None
    return client


def describe_failure(e: BaseException, target: TritonTarget) -> tuple[str, bool]:
    """(one line saying why a request failed, whether the server is gone or silent)."""
    via = "HTTP" if target.protocol == "http" else "gRPC"
    if isinstance(e, TimeoutError):
        return f"no answer within {target.timeout:g} s (timeout; ?timeout=SECONDS raises it)", True
    if isinstance(e, ConnectionRefusedError):
        return f"cannot reach a Triton server at {target.address} over {via} (refused)", True
    if isinstance(e, OSError):
        reason = e.strerror or str(e) or type(e).__name__
        return f"lost the connection to {target.address} ({reason})", True
    status = str(e.status()) if callable(getattr(e, "status", None)) else ""
    message = e.message() if callable(getattr(e, "message", None)) else str(e)
    message = " ".join((message or type(e).__name__).split())[:300]
    if status.endswith("UNAVAILABLE"):
        return f"cannot reach a Triton server at {target.address} over {via} ({message})", True
    if status.endswith("DEADLINE_EXCEEDED"):
        return f"no answer within {target.timeout:g} s (timeout; ?timeout=SECONDS raises it)", True
    return f"the server refused the request: {message}", False


class TritonBackend:
    """A model on a Triton server behind the reader's backend interface: calling it with a uint8
    NCHW batch returns the graph's four outputs; `.card` is the model card its config carries.

    One client per thread (tritonclient's clients are not meant to be shared across threads).
    """

    def __init__(self, target: TritonTarget | str):
        self.target = parse_url(target) if isinstance(target, str) else target
        self._client_module = import_tritonclient(self.target.protocol)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._clients: list = []
        self._dead_batches, self._last_failure = 0, ""
        self.config = self._read_config()
        self.card = card_from_config(self.config, where=self.target.name)
        (self.file, self.entry), *_ = self.card.files.items()
        self.max_batch = int(self.config["max_batch_size"])
        kind = self.config.get("platform") or self.config.get("backend") or "?"
        via = "HTTP" if self.target.protocol == "http" else "gRPC"
        self.name = f"Triton {via} {self.target.address} ({kind}, {self.entry['precision']})"

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            t, module = self.target, self._client_module
            if t.protocol == "http":
                client = module.InferenceServerClient(
                    t.address, connection_timeout=t.timeout, network_timeout=t.timeout
                )
            else:
                client = module.InferenceServerClient(t.address)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _timeout(self) -> dict:
        return {"client_timeout": self.target.timeout} if self.target.protocol == "grpc" else {}

    def _read_config(self) -> dict:
        t, client, kw = self.target, self._client(), self._timeout()
        try:
            client.is_server_live(**kw)
            if not client.is_model_ready(t.model, t.version, **kw):
                version = f" version {t.version}" if t.version else ""
                raise UserError(
                    f"{t.name}: model {t.model!r}{version} is not ready on {t.address}"
                    + self._ready_models(client),
                    code=2,
                )
            if t.protocol == "grpc":
                return client.get_model_config(t.model, t.version, as_json=True, **kw)["config"]
            return client.get_model_config(t.model, t.version)
        except UserError:
            raise
        except Exception as e:  # tritonclient's and the transport's own exception types
            raise UserError(f"{t.name}: {describe_failure(e, t)[0]}", code=2) from None

    def _ready_models(self, client) -> str:
        try:
            if self.target.protocol == "grpc":
                index = client.get_model_repository_index(as_json=True, **self._timeout())
                index = index.get("models", [])
            else:
                index = client.get_model_repository_index()
        except Exception:  # a listing is a courtesy (the endpoint may be restricted)
            return ""
        ready = sorted({m.get("name", "") for m in index if m.get("state") == "READY"})
        return f" (ready there: {', '.join(ready)})" if ready else " (no model is ready there)"

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        t, module = self.target, self._client_module
        with self._lock:
            if self._dead_batches >= MAX_DEAD_BATCHES:
                raise BackendError(
                    f"triton: not sent, {self._dead_batches} batches in a row failed "
                    f"(last: {self._last_failure})"
                )
        batch = module.InferInput(INPUT_NAME, list(images.shape), "UINT8")
        batch.set_data_from_numpy(images)
        wanted = [module.InferRequestedOutput(name) for name in OUTPUT_NAMES]
        try:
            result = self._client().infer(
                t.model, [batch], model_version=t.version, outputs=wanted, **self._timeout()
            )
        except Exception as e:  # tritonclient's and the transport's own exception types
            reason, gone = describe_failure(e, t)
            with self._lock:
                self._dead_batches = self._dead_batches + 1 if gone else 0
                self._last_failure = reason
            raise BackendError(f"triton: {reason}") from None
        with self._lock:
            self._dead_batches = 0
        return self._outputs(result, len(images))

    def _outputs(self, result, n: int) -> dict[str, np.ndarray]:
        k = self.card.max_detections
        shapes = {"num_dets": (n,), "boxes": (n, k, 4), "scores": (n, k), "labels": (n, k)}
        out = {}
        for name in OUTPUT_NAMES:
            array = result.as_numpy(name)
            if array is None:
                raise BackendError(f"triton: the answer has no output {name!r}")
            if name == "num_dets" and array.shape == (n, 1):  # dims [1], reshape { shape: [] }
                array = array.reshape(n)
            if array.shape != shapes[name]:
                raise BackendError(
                    f"triton: shape mismatch: output {name} is {list(array.shape)}, "
                    f"want {list(shapes[name])}"
                )
            out[name] = array
        return out

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:  # closing a broken connection may raise; nothing to do about it
                pass
