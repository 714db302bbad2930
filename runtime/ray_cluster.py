"""Starting and stopping Ray for `digit-read --ray`: a local instance, or joining a cluster
(whose nodes get a copy of this package through the job's runtime_env), quiet on stderr."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from digit_reader.runtime.errors import UserError
from digit_reader.runtime.ray_options import LOCAL


class _DropNoise(logging.Filter):
    def filter(self, record):
        return not record.getMessage().startswith("Progress bars disabled")


def _runtime_package(where: str) -> str:
    """A copy of this package as `digit_reader.runtime` under `where`, for a cluster's
    runtime_env: the nodes need numpy, pillow and onnxruntime (or TensorRT), not digit-reader."""
    import digit_reader.runtime as runtime

    stage = Path(where) / "digit_reader"
    shutil.copytree(
        Path(runtime.__file__).parent,
        stage / "runtime",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    (stage / "__init__.py").write_text("")
    return str(stage)


def start_ray(address: str, cpus: float | None) -> tuple[str | None, float]:
    """ray.init a local instance (address "local") or join a cluster; (our temporary
    directory, for stop_ray; seconds it took)."""
    try:
        import ray
    except ImportError:
        raise UserError(
            "--ray needs Ray Data: pip install 'digit-reader[ray]' (ray[data], pyarrow)", code=2
        ) from None
    common = {
        "include_dashboard": False,
        "log_to_driver": False,  # actors' output stays in the session's log files
        "logging_level": logging.WARNING,
    }
    temp = tempfile.mkdtemp(prefix="digit-ray-")  # short: a local instance's AF_UNIX sockets
    start = time.perf_counter()
    try:
        if address == LOCAL:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(address=LOCAL, num_cpus=cpus or os.cpu_count(), _temp_dir=temp, **common)
        else:
            env = {"py_modules": [_runtime_package(temp)]}
            ray.init(address=address, runtime_env=env, **common)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        shutil.rmtree(temp, ignore_errors=True)
        lines = str(e).strip().splitlines()
        hint = (
            "; to join HOST:PORT or ray://, set RAY_AUTH_MODE=token (and the cluster's token); "
            "ray:// also needs ray[client] here and on the head"
            if address not in (LOCAL, "auto")
            else ""
        )
        raise UserError(
            f"cannot {'start' if address == LOCAL else 'join'} Ray at {address}: "
            f"{lines[-1] if lines else type(e).__name__}{hint}",
            code=2,
        ) from None
    # Ray Data logs each execution's start and plan at INFO, and warns that its progress bars
    # are off (digit-read prints its own progress): keep stderr to what matters
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    import ray.data  # noqa: F401  (configures the ray.data logger)

    for handler in logging.getLogger("ray.data").handlers:
        handler.addFilter(_DropNoise())
    return temp, time.perf_counter() - start


def stop_ray(temp: str) -> None:
    """Disconnect (a local instance stops) and remove start_ray's temporary directory."""
    import ray

    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def node_resources() -> tuple[list[float], float]:
    """(CPUs of each alive node, GPUs in all)."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return [n["Resources"].get("CPU", 0.0) for n in nodes], sum(
        n["Resources"].get("GPU", 0.0) for n in nodes
    )
