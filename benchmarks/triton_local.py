"""Serve an export on loopback with the Triton server from nvidia-pytriton's wheel, for the
tests and the load benchmark (no Docker, no GPU).

nvidia-pytriton (a test extra) ships a real `tritonserver` binary (2.51) with only its Python
backend. This runs that binary directly, not through PyTriton's Python API, on a repository
derived from the one `digit-export --triton` writes: each model's config is ours field for
field (name, max_batch_size, the inputs and outputs with num_dets' reshape, dynamic_batching,
version_policy, the digit_reader.* parameters) except `backend: "python"` for `platform:
"onnxruntime_onnx"`, no ONNX-Runtime-only `optimization`, and a KIND_CPU instance; its version
directory holds the same model.onnx and a model.py that runs it with ONNX Runtime on the CPU,
merging the requests the dynamic batcher hands it into one call. So the client reads our own
config, parameters included, from a real server, and the numbers come from the same graph.
TensorRT plans cannot run here and are left out.

PyTriton's way (binding a Python callable) was not used: its public API cannot set a config's
`parameters`, so the config a client reads would not be ours.

The server runs as its own process (own session and process group; stdout and stderr to
server.log in the workspace, never ours) with:
- LD_LIBRARY_PATH = this interpreter's LIBDIR first: the Python backend's stub links
  libpython3.X.so.1.0, and without it the loader takes the system's copy, whose patch level may
  differ from the stdlib the stub then finds (an AttributeError at model load);
- PATH = this environment's bin first: the stub's embedded interpreter takes its prefix (and so
  numpy and onnxruntime) from the `python3` it finds there;
- free ports on 127.0.0.1 only (metrics off), a short workspace under /tmp, a shared-memory
  prefix of its own; readiness awaited with a bounded timeout; stop() (SIGINT, then SIGKILL of
  the whole group) always runs, also at exit, and the server dies with its parent.

    python -m digit_reader.benchmarks.triton_local EXPORT_DIR [--seconds 60]
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click

from digit_reader.runtime.command import Command
from digit_reader.runtime.errors import UserError

START_TIMEOUT_S = 120.0
EXIT_TIMEOUT_S = 5  # tritonserver's --exit-timeout-secs; stop() waits this plus a margin
MODEL_PY = '''"""Stand-in for Triton's ONNX Runtime backend: model.onnx on the CPU."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

THREADS = {threads}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.log_severity_level = 3
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = config["input"][0]["name"]
        self.outputs = [t["name"] for t in config["output"]]

    def execute(self, requests):
        # the dynamic batcher hands over several requests: one ORT call for all of them
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        results = self.session.run(self.outputs, {{self.input: np.concatenate(arrays)}})
        responses, start = [], 0
        for array in arrays:
            end = start + len(array)
            tensors = [pb_utils.Tensor(n, r[start:end]) for n, r in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = end
        return responses
'''


def _pytriton_dir() -> Path | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def libpython() -> Path | None:
    """This interpreter's shared libpython (what the Python backend's stub must link), or None."""
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if not libdir or not soname or not soname.startswith("libpython"):
        return None
    path = Path(libdir) / soname
    return path if path.is_file() else None


def _stub() -> Path | None:
    base = _pytriton_dir()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = base / "tritonserver" / "python_backend_stubs" / version if base else None
    return stub / "triton_python_backend_stub" if stub else None


def unavailable() -> str | None:
    """Why a local Triton server cannot run here (a test's skip reason), or None."""
    if not sys.platform.startswith("linux"):
        return "the Triton server bundled with nvidia-pytriton runs on Linux only"
    for module in ("tritonclient.http", "tritonclient.grpc", "onnxruntime"):
        try:
            importlib.import_module(module)
        except ImportError as e:
            return f"{module} is not importable ({e}); install the project's triton and dev extras"
    base = _pytriton_dir()
    if base is None or not (base / "tritonserver" / "bin" / "tritonserver").is_file():
        return "nvidia-pytriton (which ships tritonserver) is not installed: the dev extra has it"
    if not _stub() or not _stub().is_file():
        return f"nvidia-pytriton has no Python backend stub for Python {sys.version_info[:2]}"
    if libpython() is None:
        return (
            "this Python has no shared libpython in its LIBDIR "
            f"({sysconfig.get_config_var('LIBDIR')}); the Triton Python backend's stub needs "
            "one of exactly this build (use a Python built with --enable-shared)"
        )
    return None


def serving_repository(src: Path, dst: Path, threads: int = 1) -> list[str]:
    """Write at `dst` the repository this server can load from the digit-export repository
    `src` (see the module docstring); returns the model names. TensorRT plans are skipped."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    names = []
    dst.mkdir(parents=True, exist_ok=True)
    for model_dir in sorted(p for p in src.iterdir() if (p / "config.pbtxt").is_file()):
        config = text_format.Parse(
            (model_dir / "config.pbtxt").read_text(encoding="utf-8"), model_config_pb2.ModelConfig()
        )
        if config.platform != "onnxruntime_onnx":
            continue
        config.platform = ""
        config.backend = "python"
        config.ClearField("optimization")
        del config.instance_group[:]
        config.instance_group.add(count=1, kind=model_config_pb2.ModelInstanceGroup.KIND_CPU)
        for version in (p for p in model_dir.iterdir() if p.name.isdigit()):
            out = dst / model_dir.name / version.name
            out.mkdir(parents=True, exist_ok=True)
            os.symlink((version / "model.onnx").resolve(), out / "model.onnx")
            (out / "model.py").write_text(MODEL_PY.format(threads=threads), encoding="utf-8")
        (dst / model_dir.name / "config.pbtxt").write_text(
            text_format.MessageToString(config), encoding="utf-8"
        )
        names.append(model_dir.name)
    for note in (p for p in src.iterdir() if p.is_file()):  # README.md: files are not models
        shutil.copy(note, dst / note.name)
    return names


def free_port() -> int:
    """A port that was free a moment ago (start() retries when the server could not bind it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # in the child, before exec: SIGTERM when this process dies
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class LocalTriton:
    """A running tritonserver on 127.0.0.1; stop() it (start() registers it at exit too)."""

    process: subprocess.Popen
    http_port: int
    grpc_port: int
    workspace: Path
    shm_prefix: str
    models: list[str] = field(default_factory=list)
    startup_s: float = 0.0

    @property
    def log(self) -> Path:
        return self.workspace / "server.log"

    def url(self, model: str = "digit_reader", protocol: str = "http", query: str = "") -> str:
        scheme = "triton" if protocol == "http" else "triton+grpc"
        port = self.http_port if protocol == "http" else self.grpc_port
        return f"{scheme}://127.0.0.1:{port}/{model}" + (f"?{query}" if query else "")

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the server at once, as a crash would (stop() still cleans up after it)."""
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        """SIGINT (Triton unloads its models and exits), SIGKILL what is left of its process
        group after EXIT_TIMEOUT_S + 10 s, remove our shared memory and the workspace."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(EXIT_TIMEOUT_S + 10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.group():  # the group is ours: Python stubs left by a server that was killed
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while self.group() and time.monotonic() < deadline:
                time.sleep(0.05)
        for leftover in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            with contextlib.suppress(OSError):
                leftover.unlink()
        shutil.rmtree(self.workspace, ignore_errors=True)
        atexit.unregister(self.stop)

    def group(self) -> list[int]:
        """Running (not zombie) processes of the server's process group: server and stubs."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:  # pid (comm) state ppid pgrp ...
                state, _, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
            except (OSError, ValueError):
                continue  # gone meanwhile
            if int(pgrp) == self.process.pid and state != "Z":
                pids.append(int(stat.parent.name))
        return pids

    def group_alive(self) -> bool:
        return bool(self.group())


def _ready(port: int) -> bool:
    try:
        url = f"http://127.0.0.1:{port}/v2/health/ready"
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start(repo: Path, threads: int = 1, timeout: float = START_TIMEOUT_S) -> LocalTriton:
    """Serve the digit-export repository `repo` on 127.0.0.1; returns when every model is
    ready (UserError with the server log's tail if it is not within `timeout` seconds)."""
    reason = unavailable()
    if reason:
        raise UserError(f"cannot start a local Triton server: {reason}", code=2)
    base = _pytriton_dir() / "tritonserver"
    root = Path("/tmp") if os.access("/tmp", os.W_OK) else Path(tempfile.gettempdir())
    for attempt in range(3):  # a port taken between free_port() and the server's bind: retry
        workspace, models = _workspace(root, base, repo, threads)
        http_port, grpc_port = free_port(), free_port()
        shm_prefix = f"drt{os.getpid()}-{os.urandom(4).hex()}-"
        env = _server_env(base)
        args = _server_args(base, workspace, http_port, grpc_port, shm_prefix)
        t0 = time.perf_counter()
        process = _launch(args, env, workspace / "server.log")
        server = LocalTriton(process, http_port, grpc_port, workspace, shm_prefix, models)
        atexit.register(server.stop)
        deadline = time.monotonic() + timeout
        while server.alive() and time.monotonic() < deadline and not _ready(http_port):
            time.sleep(0.1)
        if server.alive() and _ready(http_port):
            server.startup_s = round(time.perf_counter() - t0, 2)
            return server
        tail = server.log_tail()
        server.stop()
        if "address already in use" in tail.lower() and attempt < 2:
            continue
        why = "did not get ready" if time.monotonic() >= deadline else "exited"
        raise UserError(f"the local Triton server {why}; its log ends with:\n{tail}", code=1)
    raise AssertionError("unreachable")


def _workspace(root: Path, base: Path, repo: Path, threads: int) -> tuple[Path, list[str]]:
    """(workspace, model names): a fresh short folder under `root` holding the Python backend
    (its files linked from the wheel, plus the stub for this Python) and the serving
    repository; one per attempt, since stop() removes it."""
    workspace = Path(tempfile.mkdtemp(prefix="drt-", dir=root))
    backend = workspace / "backends" / "python"
    backend.mkdir(parents=True)
    for f in (base / "backends" / "python").iterdir():
        if f.is_file():
            os.symlink(f, backend / f.name)
    os.symlink(_stub(), backend / "triton_python_backend_stub")
    models = serving_repository(repo, workspace / "repo", threads)
    return workspace, models


def _server_env(base: Path) -> dict[str, str]:
    """Our environment with this interpreter's libpython and the wheel's libraries first on
    LD_LIBRARY_PATH and this environment's bin first on PATH (why: the module docstring)."""
    env = dict(os.environ)
    libs = [str(libpython().parent), str(base.parent.parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [env.get("LD_LIBRARY_PATH", "")]).rstrip(
        os.pathsep
    )
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _server_args(
    base: Path, workspace: Path, http_port: int, grpc_port: int, shm_prefix: str
) -> list[str]:
    """tritonserver's command line: loopback only, metrics off, the config served as written,
    and a shared-memory prefix of its own so stop() removes only this server's regions."""
    return [
        str(base / "bin" / "tritonserver"),
        f"--model-repository={workspace / 'repo'}",
        f"--backend-directory={workspace / 'backends'}",
        "--http-address=127.0.0.1",
        f"--http-port={http_port}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc_port}",
        "--allow-metrics=false",
        "--disable-auto-complete-config",  # serve the config as written
        f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
    ]


def _launch(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start the server in its own session (so stop() can kill its whole group), its output
    to `log_path` and never to ours, and dying with this process."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


@contextlib.contextmanager
def serve(repo: Path, threads: int = 1, timeout: float = START_TIMEOUT_S) -> Iterator[LocalTriton]:
    server = start(repo, threads, timeout)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def serve_export(export_dir: Path, threads: int = 1) -> Iterator[LocalTriton]:
    """Write the Triton repository of an export (digit-export's own writer) and serve it."""
    from digit_reader.export.triton_repo import write_repository

    with tempfile.TemporaryDirectory(prefix="drt-repo-") as tmp:
        write_repository(export_dir, Path(tmp) / "repo", log=lambda _: None)
        with serve(Path(tmp) / "repo", threads) as server:
            yield server


@click.command(cls=Command)
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--seconds", default=60.0, show_default=True, help="Serve this long, then stop.")
@click.option("--threads", default=1, show_default=True, help="ONNX Runtime threads per model.")
def main(export_dir, seconds, threads):
    """Serve EXPORT_DIR's models on 127.0.0.1 with the Triton server of nvidia-pytriton."""
    with serve_export(export_dir, threads) as server:
        click.echo(f"serving {', '.join(server.models)} (ready in {server.startup_s} s)", err=True)
        click.echo(f"  {server.url(protocol='http')}\n  {server.url(protocol='grpc')}", err=True)
        end = time.monotonic() + seconds
        with contextlib.suppress(KeyboardInterrupt):
            while server.alive() and time.monotonic() < end:
                time.sleep(0.5)


if __name__ == "__main__":
    main()
