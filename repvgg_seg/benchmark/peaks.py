"""The host's peak arithmetic rates, measured in the same run as the models they judge.

A model's time alone says little about how well a runtime uses the machine; its rate as a
share of what the machine does on the simplest dense work in the same precision does. On
CUDA that is a large matmul in the benchmark's precision. On CPU it is one rate per precision
a row can compute in: float32 (the better of a large matmul and a large direct 3x3 conv,
since oneDNN's convs can beat the BLAS matmul on some CPUs), bfloat16 matmul, and int8 (the
better of ``torch._int_mm``, int8 inputs with int32 accumulation, and a chain of int8 3x3
convs in OpenVINO, where OpenVINO is installed). The int8 conv chain is there because the
matmul is no bound on this host class: on a Xeon with AMX, ``torch._int_mm`` ran 1.8 int8
TMAC/s while OpenVINO's AMX convs ran 3.0-3.3 in a chain and a whole INT8 PSPNet 2.1
(2026-12-04), which made that row "115 % of the peak".
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .cuda import time_cuda
from .settings import BenchmarkSettings

INT8_CONV_CHAIN = 8
"""Int8 3x3 convs in the chain that measures OpenVINO's int8 rate: enough that its float32
input and output (quantized and reordered once per call) cost little against the convs."""


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
    int8_conv: float | None = None
    """OpenVINO's int8 3x3 conv chain; None where OpenVINO is not installed."""

    def by_precision(self) -> dict[str, float]:
        """Precision -> its peak rate in TFLOP/s (2 FLOPs per MAC), as rows are judged."""
        return {
            "fp32": 2 * max(self.fp32_matmul, self.fp32_conv) / 1000,
            "bf16": 2 * self.bf16_matmul / 1000,
            "int8": 2 * max(self.int8_matmul, self.int8_conv or 0.0) / 1000,
        }

    def describe(self) -> str:
        return (
            f"host peak ({torch.get_num_threads()} threads, median of this run's rounds), GMAC/s: "
            f"fp32 matmul {self.fp32_matmul:.0f}, fp32 3x3 conv {self.fp32_conv:.0f}, "
            f"bf16 matmul {self.bf16_matmul:.0f}, int8 matmul {self.int8_matmul:.0f}, "
            + (
                "int8 3x3 conv (OpenVINO not installed)"
                if self.int8_conv is None
                else f"int8 3x3 conv (OpenVINO) {self.int8_conv:.0f}"
            )
        )


class CpuPeakSampler:
    """Measures :class:`CpuPeaks` once per benchmark round: under the same load as the models.

    On a shared machine the load changes over a run; a peak measured once, before the
    models, can land in a quiet or a busy moment and make every share wrong. Sampled in
    every round and reduced by the median, like the models' times, it sees what they see.

    Args:
        matmul_size: Side of the square matmuls (2048: 8.6 GMAC, under 100 ms in float32
            on 2 cores of an AVX-512 host).
        conv_channels: Input and output channels of the float32 conv (3x3, stride 1,
            channels-last); the int8 convs have twice as many.
        conv_size: Height of the float32 conv's input, the width is twice that; the int8
            convs' input is half as high and wide, so that each does the float32 conv's work.
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
        self._int8_conv_shape = (2 * c, max(1, h // 2), h)
        self._int8_conv = openvino_int8_conv_chain(*self._int8_conv_shape)

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
            int8_conv=self._int8_conv_rate(),
        )
        self.samples.append(peaks)
        return peaks

    def _int8_conv_rate(self) -> float | None:
        if self._int8_conv is None:
            return None
        c, h, w = self._int8_conv_shape
        return self._rate(self._int8_conv, INT8_CONV_CHAIN * c * c * 9 * h * w)

    def peaks(self) -> CpuPeaks:
        """The median of each rate over the samples (one is taken if there are none yet)."""
        if not self.samples:
            self.sample()
        values = {}
        for name in CpuPeaks.__dataclass_fields__:
            measured = [getattr(s, name) for s in self.samples if getattr(s, name) is not None]
            values[name] = statistics.median(measured) if measured else None
        return CpuPeaks(**values)


def openvino_int8_conv_chain(channels: int, height: int, width: int) -> Callable[[], object] | None:
    """One inference of :data:`INT8_CONV_CHAIN` int8 3x3 convs (``channels`` in and out,
    ``height`` x ``width``, ReLU) in OpenVINO on the CPU, as it runs the QDQ models: the
    activations quantized to 8 bits between the convs, int8 weights with one scale per
    output channel, the benchmark's OpenVINO settings. None if OpenVINO is not installed."""
    try:
        import openvino
        import openvino.opset13 as ops
    except ImportError:
        return None
    from .runtimes import OPENVINO_CONFIG, openvino_core

    def quantized(node, high: float):
        low, high = np.float32(0.0), np.float32(high)
        return ops.fake_quantize(node, low, high, low, high, 256)

    rng = np.random.default_rng(0)
    image = ops.parameter([1, channels, height, width], np.float32)
    out = quantized(image, 4.0)
    for _ in range(INT8_CONV_CHAIN):
        weight = rng.integers(-127, 128, (channels, channels, 3, 3), dtype=np.int8)
        scale = np.full((channels, 1, 1, 1), 1e-3, np.float32)
        weight = ops.multiply(ops.convert(ops.constant(weight), np.float32), scale)
        conv = ops.convolution(out, weight, [1, 1], [1, 1], [1, 1], [1, 1])
        out = quantized(ops.relu(conv), 8.0)
    compiled = openvino_core().compile_model(
        openvino.Model([out], [image]),
        "CPU",
        {**OPENVINO_CONFIG, "INFERENCE_NUM_THREADS": torch.get_num_threads()},
    )
    request = compiled.create_infer_request()
    array = rng.uniform(0.0, 4.0, (1, channels, height, width)).astype(np.float32)
    return lambda: request.infer({0: array})
