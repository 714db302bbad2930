"""Where a model is served: `triton://HOST:PORT/MODEL` URLs as digit-read's --model takes them.

    triton://HOST[:PORT]/MODEL[/VERSION][?timeout=SECONDS]        HTTP, port 8000 by default
    triton+grpc://HOST[:PORT]/MODEL[/VERSION][?timeout=SECONDS]   gRPC, port 8001 by default

(`triton+http://` is `triton://`.) The timeout bounds every request, 60 s by default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from digit_reader.runtime.errors import UserError

SCHEMES = {"triton": "http", "triton+http": "http", "triton+grpc": "grpc"}
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
DEFAULT_TIMEOUT_S = 60.0


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
