"""CUDA-only parts of a benchmark: cuDNN and TF32 settings, and CUDA graph capture."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from .settings import BenchmarkSettings


@contextlib.contextmanager
def cuda_settings(settings: BenchmarkSettings) -> Iterator[None]:
    """cuDNN's autotuner on and TF32 as asked, for the run; the caller's values restored."""
    saved = (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )
    torch.backends.cudnn.benchmark = True
    if settings.tf32 is not None:
        torch.backends.cudnn.allow_tf32 = settings.tf32
        torch.backends.cuda.matmul.allow_tf32 = settings.tf32
    try:
        yield
    finally:
        (
            torch.backends.cudnn.benchmark,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32,
        ) = saved


def capture_graph(forward: Callable[[], object]) -> Callable[[], None]:
    """The replay of a CUDA graph holding one call of ``forward``.

    ``forward`` warms up on a side stream first (allocations and cuDNN's algorithm choices
    happen outside the capture); the replay reads the same input buffer, so its timing
    includes no copies.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            forward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward()
    return graph.replay


def time_cuda(run: Callable[[], object]) -> float:
    """Seconds of one call of ``run`` between two CUDA events (synchronized)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000
