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

from .cuda import time_cuda
from .settings import BenchmarkSettings


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
    timer = time_cuda if settings.is_cuda else _wall_clock
    seconds = _median_seconds(lambda: torch.matmul(a, b), repeats, timer)
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
            f"host peak ({torch.get_num_threads()} threads, median of this run's rounds), GMAC/s: "
            f"fp32 matmul {self.fp32_matmul:.0f}, fp32 3x3 conv {self.fp32_conv:.0f}, "
            f"bf16 matmul {self.bf16_matmul:.0f}, int8 matmul {self.int8_matmul:.0f}"
        )


class CpuPeakSampler:
    """Measures :class:`CpuPeaks` once per benchmark round: under the same load as the models.

    On a shared machine the load changes over a run; a peak measured once, before the
    models, can land in a quiet or a busy moment and make every share wrong. Sampled in
    every round and reduced by the median, like the models' times, it sees what they see.

    Args:
        matmul_size: Side of the square matmuls (2048: 8.6 GMAC, under 100 ms in float32
            on 2 cores of an AVX-512 host).
        conv_channels: Input and output channels of the conv (3x3, stride 1, channels-last).
        conv_size: Height of its input; the width is twice that.
        repeats: Timed calls per rate and sample (their median counts).
    """

    def __init__(
        self,
        matmul_size: int = 2048,
        conv_channels: int = 256,
        conv_size: int = 64,
        repeats: int = 3,
    ) -> None:
        generator = torch.Generator().manual_seed(0)
        n, c, h = matmul_size, conv_channels, conv_size
        self.repeats = repeats
        self.samples: list[CpuPeaks] = []
        self._matmul_macs, self._conv_macs = n**3, c * c * 9 * h * 2 * h
        self._fp32 = [torch.randn(n, n, generator=generator) for _ in range(2)]
        self._bf16 = [t.to(torch.bfloat16) for t in self._fp32]
        # torch._int_mm wants int8 (m x k) @ (k x n) with m > 16 and k, n multiples of 8.
        self._int8 = [
            torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=generator) for _ in "ab"
        ]
        cl = torch.channels_last
        self._image = torch.randn(1, c, h, 2 * h, generator=generator).contiguous(memory_format=cl)
        self._weight = torch.randn(c, c, 3, 3, generator=generator).contiguous(memory_format=cl)

    def _rate(self, run: Callable[[], object], macs: int) -> float:
        return macs / _median_seconds(run, self.repeats, _wall_clock) / 1e9

    @torch.no_grad()
    def sample(self) -> CpuPeaks:
        """One measurement of every rate, kept in :attr:`samples`."""
        peaks = CpuPeaks(
            fp32_matmul=self._rate(lambda: torch.matmul(*self._fp32), self._matmul_macs),
            fp32_conv=self._rate(
                lambda: F.conv2d(self._image, self._weight, padding=1), self._conv_macs
            ),
            bf16_matmul=self._rate(lambda: torch.matmul(*self._bf16), self._matmul_macs),
            int8_matmul=self._rate(lambda: torch._int_mm(*self._int8), self._matmul_macs),
        )
        self.samples.append(peaks)
        return peaks

    def peaks(self) -> CpuPeaks:
        """The median of each rate over the samples (one is taken if there are none yet)."""
        if not self.samples:
            self.sample()
        fields = CpuPeaks.__dataclass_fields__
        return CpuPeaks(
            **{name: statistics.median(getattr(s, name) for s in self.samples) for name in fields}
        )
