"""The host's peak arithmetic rates, measured in the same run as the models they judge.

A model's time alone says little about how well a runtime uses the machine; its rate as a
share of what the machine does on the simplest dense work in the same precision does. On
CUDA that is a large matmul in the benchmark's precision. On CPU it is one rate per precision
a row can compute in: float32 (the better of a large matmul and a large direct 3x3 conv,
since oneDNN's convs can beat the BLAS matmul on some CPUs), bfloat16 matmul and int8 matmul
(``torch._int_mm``: int8 inputs, int32 accumulation, oneDNN's VNNI/AMX kernels where the CPU
has them).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .settings import BenchmarkSettings
from .timing import time_once


def _median_seconds(run: Callable[[], object], repeats: int, timer: Callable) -> float:
    for _ in range(2):
        run()
    return statistics.median(timer(run) for _ in range(repeats))


def _wall_clock(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def matmul_tflops(settings: BenchmarkSettings, size: int = 8192, repeats: int = 20) -> float:
    """The device's dense matrix-multiply rate in the benchmark's precision (TFLOP/s).

    A ``size`` x ``size`` by ``size`` x ``size`` matmul in ``settings.dtype`` (2 FLOPs per
    multiply-accumulate), median of ``repeats`` timed runs after warm-up.
    """
    generator = torch.Generator(device=settings.device).manual_seed(0)
    a, b = (
        torch.randn(size, size, device=settings.device, dtype=settings.dtype, generator=generator)
        for _ in range(2)
    )
    seconds = _median_seconds(
        lambda: torch.matmul(a, b), repeats, lambda run: time_once(run, settings)
    )
    return 2 * size**3 / seconds / 1e12


@dataclass(frozen=True)
class CpuPeaks:
    """Measured CPU rates in GMAC/s (multiply-accumulates per second / 1e9)."""

    fp32_matmul: float
    fp32_conv: float
    bf16_matmul: float
    int8_matmul: float

    def by_precision(self) -> dict[str, float]:
        """Precision -> its peak rate in TFLOP/s (2 FLOPs per MAC), as rows are judged."""
        return {
            "fp32": 2 * max(self.fp32_matmul, self.fp32_conv) / 1000,
            "bf16": 2 * self.bf16_matmul / 1000,
            "int8": 2 * self.int8_matmul / 1000,
        }

    def describe(self) -> str:
        return (
            f"host peak ({torch.get_num_threads()} threads, measured in this run), GMAC/s: "
            f"fp32 matmul {self.fp32_matmul:.0f}, fp32 3x3 conv {self.fp32_conv:.0f}, "
            f"bf16 matmul {self.bf16_matmul:.0f}, int8 matmul {self.int8_matmul:.0f}"
        )


def cpu_peaks(
    matmul_size: int = 2048, conv_channels: int = 256, conv_size: int = 64, repeats: int = 5
) -> CpuPeaks:
    """Measures :class:`CpuPeaks` with the thread count torch has now.

    Args:
        matmul_size: Side of the square matmuls (2048: 8.6 GMAC, a few hundred ms in float32
            on 2 cores).
        conv_channels: Input and output channels of the conv (3x3, stride 1, channels-last).
        conv_size: Height of its input; the width is twice that.
        repeats: Timed runs per rate (the median counts).
    """
    generator = torch.Generator().manual_seed(0)
    n = matmul_size

    def matmul_rate(dtype: torch.dtype) -> float:
        a, b = (torch.randn(n, n, generator=generator).to(dtype) for _ in range(2))
        return n**3 / _median_seconds(lambda: torch.matmul(a, b), repeats, _wall_clock) / 1e9

    # torch._int_mm wants int8 (m x k) @ (k x n) with m > 16 and k, n multiples of 8.
    a8, b8 = (torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=generator) for _ in "ab")
    int8 = n**3 / _median_seconds(lambda: torch._int_mm(a8, b8), repeats, _wall_clock) / 1e9

    c, h = conv_channels, conv_size
    image = torch.randn(1, c, h, 2 * h, generator=generator)
    image = image.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c, c, 3, 3, generator=generator)
    weight = weight.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        seconds = _median_seconds(lambda: F.conv2d(image, weight, padding=1), repeats, _wall_clock)
    conv = c * c * 9 * h * 2 * h / seconds / 1e9
    with torch.no_grad():
        return CpuPeaks(matmul_rate(torch.float32), conv, matmul_rate(torch.bfloat16), int8)
