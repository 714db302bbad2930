"""A Triton Inference Server as the reader's backend: `digit-read --model triton://HOST:PORT/MODEL`.

The reader keeps the preprocessing contract and the decoding rule (`Reader` letterboxes and
decodes here); the server only runs the graph. What that graph is comes from the model's config
on the server (runtime/triton_config.py checks it and reads the model card `digit-export
--triton` put in its `parameters`); a model whose config is not a digit-reader model's, or whose
inputs/outputs disagree with its own card, is refused with one line. URLs: runtime/triton_url.py.

tritonclient (`pip install 'digit-reader[triton]'`) is imported inside functions only, so this
module imports without it, as every runtime module does.
"""

from __future__ import annotations

import threading

import numpy as np

from digit_reader.runtime.contract import INPUT_NAME, OUTPUT_NAMES, graph_io
from digit_reader.runtime.errors import BackendError, UserError
from digit_reader.runtime.triton_config import card_from_config
from digit_reader.runtime.triton_url import TritonTarget, parse_url

TRITON_EXTRA = "pip install 'digit-reader[triton]'"
# After this many batches in a row lost to an unreachable or silent server, the remaining
# batches are not sent (each still named as failed): a hung server must not cost a timeout
# per batch for the rest of a 13,000-image run.
MAX_DEAD_BATCHES = 3


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
        _, specs = graph_io(self.card.canvas, self.card.max_detections)
        shapes = {t.name: (n, *t.dims) for t in specs}
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
