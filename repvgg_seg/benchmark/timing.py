"""Timing every case in interleaved rounds: the core of the benchmark.

A time alone means little on a shared machine, so every case is timed in the same rounds:
each round runs every case once (in a rotated order), and the report gives per-case medians,
the spread over rounds and the speed ratio to the first case.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UsageError
from .counting import count_macs
from .cuda import capture_graph, cuda_settings, time_cuda
from .memory import cuda_peak_memory_bytes, peak_memory_bytes
from .peaks import CpuPeakSampler
from .runtimes import RuntimeRunners
from .settings import TREATMENTS, BenchmarkSettings, Case, CaseResult

logger = logging.getLogger(__name__)


def _autocast(settings: BenchmarkSettings) -> contextlib.AbstractContextManager:
    if settings.autocast and settings.precision != "fp32":
        device_type = torch.device(settings.device).type
        return torch.autocast(device_type, dtype=settings.dtype)
    return contextlib.nullcontext()


def treatment_of(case: Case, settings: BenchmarkSettings) -> str:
    """The case's treatment, or the settings' default (``compile`` or ``eager``)."""
    if case.treatment is not None:
        return case.treatment
    return "compile" if settings.compile else "eager"


def prepare_module(module: nn.Module, settings: BenchmarkSettings) -> nn.Module:
    """Puts ``module`` in eval mode on the device, in the dtype and memory format asked for."""
    module = module.eval().to(settings.device)
    if not settings.autocast:
        module = module.to(settings.dtype)
    if settings.channels_last:
        module = module.to(memory_format=torch.channels_last)
    return module


def make_forward(
    module: nn.Module, image: torch.Tensor, treatment: str, settings: BenchmarkSettings
) -> Callable[[], object]:
    """A no-argument function that runs one forward pass of ``image`` as ``treatment`` says.

    ``graph`` treatments replay a CUDA graph of one pass (:func:`capture_graph`).
    """
    if treatment not in TREATMENTS:
        raise UsageError(f"treatment must be one of {TREATMENTS}, got {treatment!r}.")
    if "graph" in treatment and not settings.is_cuda:
        raise UsageError(f"treatment {treatment!r} needs a CUDA device, got {settings.device!r}.")
    if treatment.startswith("compile"):
        module = torch.compile(module, mode=settings.compile_mode)

    def forward() -> object:
        with torch.no_grad(), _autocast(settings):
            return module(image)

    return capture_graph(forward) if "graph" in treatment else forward


def time_once(run: Callable[[], object], settings: BenchmarkSettings) -> float:
    """Seconds of one call of ``run``: CUDA events (synchronized) on CUDA, a wall clock on CPU."""
    if settings.is_cuda:
        return time_cuda(run)
    start_time = time.perf_counter()
    run()
    return time.perf_counter() - start_time


def run_benchmark(
    cases: Sequence[Case],
    settings: BenchmarkSettings,
    matmul_rate: float | None = None,
    peak_rates: Mapping[str, float] | None = None,
    runners: RuntimeRunners | None = None,
    peak_sampler: CpuPeakSampler | None = None,
) -> list[CaseResult]:
    """Times every case in interleaved rounds and measures MACs, parameters and memory.

    Args:
        cases: The models; each is moved to the device and cast as ``settings`` says (cases
            with another runtime are converted for it from their float32 module).
        settings: How to run them.
        matmul_rate: The device's measured matmul TFLOP/s in ``settings.precision``
            (:func:`repvgg_seg.benchmark.peaks.matmul_tflops`); when given, each result states
            its share of it.
        peak_rates: Precision -> measured peak TFLOP/s (CPU:
            :meth:`repvgg_seg.benchmark.peaks.CpuPeaks.by_precision`), for the same share.
        runners: Builds the forward passes of cases under other runtimes (default: one made
            here, its exported files removed at the end).
        peak_sampler: Measures the CPU's peak rates after every round; their medians
            (:meth:`CpuPeakSampler.peaks`) take the place of ``peak_rates``.

    Returns:
        One result per case, in the order given; ``relative_speed`` is each case's speed
        divided by the first case's.
    """
    if not cases:
        raise UsageError("Nothing to benchmark: pass at least one case.")
    names = [case.name for case in cases]
    if len(set(names)) != len(names):
        raise UsageError(f"Case names must be unique, got {names}.")
    others = [case.name for case in cases if case.runtime != "torch"]
    if others and settings.is_cuda:
        raise UsageError(f"cases {others} use runtimes other than torch, which run on CPU only.")
    rates = dict(peak_rates or {})
    if matmul_rate is not None:
        rates[settings.precision] = matmul_rate
    with contextlib.ExitStack() as stack:
        if settings.is_cuda:
            stack.enter_context(cuda_settings(settings))
        if runners is None:
            runners = stack.enter_context(RuntimeRunners())
        return _run_benchmark(cases, settings, rates, runners, peak_sampler)


@dataclass
class _Prepared:
    forward: Callable[[], object]
    macs: int
    params: int
    peak_bytes: int | None


def _input(settings: BenchmarkSettings) -> torch.Tensor:
    """The benchmark's float32 NCHW input, seeded."""
    generator = torch.Generator().manual_seed(0)
    shape = (settings.batch, settings.channels, settings.height, settings.width)
    return torch.randn(*shape, generator=generator).to(settings.device)


def _prepare(
    case: Case, settings: BenchmarkSettings, image: torch.Tensor, runners: RuntimeRunners
) -> _Prepared:
    """The case's forward pass, MACs, parameters and peak memory of one eager pass."""
    if case.runtime != "torch":
        # Counted on a float32 copy: a torch case may share the module and have cast it.
        module = copy.deepcopy(case.module).float().eval()
        with torch.no_grad():
            macs = count_macs(module, image[:1]) * settings.batch
        params = sum(p.numel() for p in module.parameters())
        del module
        forward = runners.runner(case.module, case.runtime, image, case.onnx_file)
        forward()
        peak = peak_memory_bytes(forward) if case.runtime.startswith("torch") else None
        return _Prepared(forward, macs, params, peak)
    if not settings.autocast:
        image = image.to(settings.dtype)
    if settings.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    module = prepare_module(case.module, settings)
    with torch.no_grad(), _autocast(settings):
        macs = count_macs(module, image[:1]) * settings.batch
    eager = make_forward(module, image, "eager", settings)
    eager()  # cuDNN's autotuner tries algorithms (and their workspaces) on the first pass
    peak = cuda_peak_memory_bytes(eager) if settings.is_cuda else peak_memory_bytes(eager)
    forward = make_forward(module, image, treatment_of(case, settings), settings)
    params = sum(p.numel() for p in module.parameters())
    return _Prepared(forward, macs, params, peak)


def _run_benchmark(
    cases: Sequence[Case],
    settings: BenchmarkSettings,
    peak_rates: Mapping[str, float],
    runners: RuntimeRunners,
    peak_sampler: CpuPeakSampler | None,
) -> list[CaseResult]:
    image = _input(settings)
    prepared = {}
    for case in cases:
        prepared[case.name] = _prepare(case, settings, image, runners)
        for _ in range(settings.warmup):
            prepared[case.name].forward()
        logger.info("warmed up %s", case.name)
    for round_index in range(settings.rounds):
        shift = round_index % len(cases)
        for case in list(cases[shift:]) + list(cases[:shift]):
            case.times.append(time_once(prepared[case.name].forward, settings))
        if peak_sampler is not None:
            peak_sampler.sample()
        logger.info("round %d/%d done", round_index + 1, settings.rounds)
    if peak_sampler is not None:
        peak_rates = {**peak_rates, **peak_sampler.peaks().by_precision()}
    reference = statistics.median(cases[0].times)
    return [_result(case, prepared[case.name], settings, reference, peak_rates) for case in cases]


def _result(
    case: Case,
    prepared: _Prepared,
    settings: BenchmarkSettings,
    reference: float,
    peak_rates: Mapping[str, float],
) -> CaseResult:
    median = statistics.median(case.times)
    tflops = 2 * prepared.macs / median / 1e12
    precision = case.precision(settings)
    peak = peak_rates.get(precision)
    return CaseResult(
        name=case.name,
        images_per_s=settings.batch / median,
        median_ms=1000 * median,
        min_ms=1000 * min(case.times),
        max_ms=1000 * max(case.times),
        spread_pct=100 * (max(case.times) - min(case.times)) / median,
        relative_speed=reference / median,
        gmacs=prepared.macs / 1e9,
        params_m=prepared.params / 1e6,
        gmacs_per_s=prepared.macs / 1e9 / median,
        peak_memory_mb=None if prepared.peak_bytes is None else prepared.peak_bytes / 2**20,
        tflops=tflops,
        matmul_pct=100 * tflops / peak if peak else None,
        runtime=case.runtime,
        precision=precision,
    )
