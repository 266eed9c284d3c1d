"""What CPU this is: its model name and the SIMD flags that decide which kernels run fast.

Read from ``/proc/cpuinfo`` at run time, so that every measurement (benchmark headers,
quantization reports) names the host it was made on instead of describing it from memory.
"""

from __future__ import annotations

import contextlib

SIMD_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
"""The flags worth naming: AVX2/FMA (float32), AVX-512, VNNI (int8 dot products), BF16 and
FP16 arithmetic, AMX tiles (bf16 and int8 matrix units)."""


def cpu_info(path: str = "/proc/cpuinfo") -> tuple[str, list[str]]:
    """The CPU model name and which of :data:`SIMD_FLAGS` it reports (from ``path``)."""
    model, flags = "unknown", set()
    with contextlib.suppress(OSError), open(path) as file:
        for line in file:
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return model, [flag for flag in SIMD_FLAGS if flag in flags]
