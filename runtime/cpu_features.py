"""What this CPU offers int8 and bf16 inference, from the flags the kernel reports.

Why it matters: on x86 without VNNI (AVX-512 VNNI or AVX-VNNI), the int8 kernels of ONNX
Runtime (MLAS) and OpenVINO (oneDNN) multiply uint8 activations by int8 weights with
vpmaddubsw, whose 16-bit intermediate saturates: a full-range int8 model then reads other
numbers (measured: 92 % of the demo's images as eager, against 97.5 % for the same graph run
exactly). bf16 needs AVX512_BF16 or AMX.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

X86 = ("x86_64", "amd64", "i386", "i686")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo); empty where they cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def is_x86() -> bool:
    return platform.machine().lower() in X86


def int8_saturates() -> bool:
    """Whether u8 x s8 int8 kernels can saturate here: x86 without VNNI. Unknown flags on x86
    count as saturating (the exact path is always correct, only slower)."""
    return is_x86() and not ({"avx512_vnni", "avx_vnni"} & cpu_flags())
