"""Peak memory of one forward pass, on CPU and on CUDA."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.autograd import (
    ProfilerConfig,
    ProfilerState,
    _disable_profiler_legacy,
    _enable_profiler_legacy,
)


def peak_memory_bytes(run: Callable[[], object]) -> int:
    """Peak of CPU memory allocated (net of frees) while ``run()`` executes.

    Every allocation through PyTorch's CPU allocator counts, oneDNN scratch space and weight
    reorders included; memory held before ``run`` starts (the weights) does not.

    The allocations are recorded by PyTorch's CPU-only (legacy) profiler state: it reports
    the same allocation events as ``torch.profiler`` with ``profile_memory=True`` (equal peaks),
    without starting Kineto, whose console lines (``profiler_start``/``profiler_stop``, and
    an ``ERROR ... gpuGetDeviceCount failed`` from its GPU probe on a machine without one) a
    user cannot tell from real failures.
    """
    config = ProfilerConfig(
        ProfilerState.CPU,
        False,  # record_shapes
        True,  # profile_memory
        False,  # with_stack
        False,  # with_flops
        False,  # with_modules
        torch._C._profiler._ExperimentalConfig(),
    )
    _enable_profiler_legacy(config)
    try:
        run()
    finally:
        records = [r for thread in _disable_profiler_legacy() for r in thread]
    allocations = sorted(
        (r for r in records if r.kind() == "memory_alloc"), key=lambda r: r.start_us()
    )
    current = peak = 0
    for record in allocations:
        current += record.cpu_memory_usage()
        peak = max(peak, current)
    return peak


def cuda_peak_memory_bytes(run: Callable[[], object]) -> int:
    """Peak CUDA memory allocated while ``run()`` executes, beyond what was held before."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    held = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - held
