"""Inference speed of segmentors, training-time and deployed, measured in one interleaved run.

A time alone means little on a shared machine, so every case is timed in the same rounds:
each round runs every case once (in a rotated order), and the report gives per-case medians,
the spread over rounds and the speed ratio to the first case. Besides time it reports
multiply-accumulates (convs and linears, counted by hooks), parameters, effective GMAC/s
and the peak memory of one forward pass (every CPU allocation, from the profiler).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .deploy import deploy_segmentor, enable_winograd
from .models.arch import get_arch
from .models.backbone import DILATION_MODES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchmarkSettings:
    """How every case is run.

    Attributes:
        height: Input height.
        width: Input width.
        batch: Images per forward pass.
        warmup: Untimed forward passes per case before measuring.
        rounds: Timed rounds; each runs every case once.
        channels_last: Model and input in ``torch.channels_last``.
        bf16: CPU autocast to bfloat16.
        compile: ``torch.compile`` each model (compiled during warm-up).
        channels: Input channels (3 for images; a layer's width for single-layer cases).
    """

    height: int = 713
    width: int = 713
    batch: int = 1
    warmup: int = 1
    rounds: int = 5
    channels_last: bool = False
    bf16: bool = False
    compile: bool = False
    channels: int = 3

    def __post_init__(self) -> None:
        for name in ("height", "width", "batch", "rounds", "channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}.")


@dataclass
class Case:
    """One model to time: a name and a module mapping an image batch to an output."""

    name: str
    module: nn.Module
    times: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class CaseResult:
    """The measurements of one case (times in seconds per forward pass)."""

    name: str
    images_per_s: float
    median_ms: float
    min_ms: float
    max_ms: float
    spread_pct: float
    relative_speed: float
    gmacs: float
    params_m: float
    gmacs_per_s: float
    peak_memory_mb: float


# --------------------------------------------------------------------------- models


class BackboneOnly(nn.Module):
    """The backbone of a segmentor, returning its last output."""

    def __init__(self, segmentor: nn.Module) -> None:
        super().__init__()
        self.backbone = segmentor.backbone

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.backbone(image)[-1]


def plain_repvgg(arch_name: str, dilation_mode: str = "fast") -> nn.Sequential:
    """A deployed RepVGG as the official release runs it: only ``Conv2d(3x3, bias)`` + ReLU.

    The reference for "no overhead from our abstractions": same widths, groups, strides and
    dilations as :class:`repvgg_seg.models.RepVGG`, none of its code.
    """
    arch = get_arch(arch_name)
    strides, dilations, dilated_layers = DILATION_MODES[dilation_mode]
    first_dilated = arch.num_layers - (dilated_layers or arch.num_layers)
    layers: list[nn.Module] = []
    in_channels, layer = 3, 0
    for stage, depth in enumerate((1, *arch.num_blocks)):
        for i in range(depth):
            out_channels = arch.channels[stage]
            dilation = dilations[stage] if layer >= first_dilated else 1
            conv = nn.Conv2d(
                in_channels,
                out_channels,
                3,
                stride=strides[stage] if i == 0 else 1,
                padding=dilation,
                dilation=dilation,
                groups=arch.layer_groups(layer),
            )
            layers += [conv, nn.ReLU()]
            in_channels = out_channels
            layer += 1
    return nn.Sequential(*layers)


def deployed_copy(segmentor: nn.Module, winograd: bool = False) -> nn.Module:
    """A deployed copy (:func:`repvgg_seg.deploy.deploy_segmentor`) of ``segmentor``.

    With ``winograd``, its eligible 3x3 convs also run Winograd F(4x4, 3x3)
    (:func:`repvgg_seg.deploy.enable_winograd`), as a deploy config with ``winograd=True``
    builds them.
    """
    model = copy.deepcopy(segmentor)
    deploy_segmentor(model, torch.randn(1, 3, 64, 64))
    if winograd:
        enable_winograd(model)
    return model


# --------------------------------------------------------------------------- counting


@torch.no_grad()
def count_macs(module: nn.Module, image: torch.Tensor) -> int:
    """Multiply-accumulates of the convs and linears in one forward pass of ``image``."""
    total = 0

    def conv_hook(conv: nn.Conv2d, args: tuple, output: torch.Tensor) -> None:
        nonlocal total
        per_output = conv.weight.shape[1] * conv.weight.shape[2] * conv.weight.shape[3]
        total += output.numel() * per_output

    def linear_hook(linear: nn.Linear, args: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * linear.in_features

    handles = []
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            handles.append(sub.register_forward_hook(conv_hook))
        elif isinstance(sub, nn.Linear):
            handles.append(sub.register_forward_hook(linear_hook))
    try:
        module(image)
    finally:
        for handle in handles:
            handle.remove()
    return total


def peak_memory_bytes(run: Callable[[], object]) -> int:
    """Peak of CPU memory allocated (net of frees) while ``run()`` executes.

    Every allocation through PyTorch's CPU allocator counts, oneDNN scratch space and weight
    reorders included; memory held before ``run`` starts (the weights) does not.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak


# --------------------------------------------------------------------------- timing


def _prepare(module: nn.Module, settings: BenchmarkSettings) -> nn.Module:
    module.eval()
    if settings.channels_last:
        module = module.to(memory_format=torch.channels_last)
    if settings.compile:
        module = torch.compile(module)
    return module


def _autocast(settings: BenchmarkSettings) -> contextlib.AbstractContextManager:
    if settings.bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run_benchmark(cases: Sequence[Case], settings: BenchmarkSettings) -> list[CaseResult]:
    """Times every case in interleaved rounds and measures MACs, parameters and memory.

    Returns:
        One result per case, in the order given; ``relative_speed`` is each case's speed
        divided by the first case's.
    """
    if not cases:
        raise ValueError("Nothing to benchmark: pass at least one case.")
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(
        settings.batch, settings.channels, settings.height, settings.width, generator=generator
    )
    if settings.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)

    static = {}
    for case in cases:
        params = sum(p.numel() for p in case.module.parameters())
        macs = count_macs(case.module.eval(), image[:1]) * settings.batch
        static[case.name] = (macs, params)
    runners = {case.name: _prepare(case.module, settings) for case in cases}

    def forward(name: str) -> None:
        with torch.no_grad(), _autocast(settings):
            runners[name](image)

    for case in cases:
        for _ in range(settings.warmup):
            forward(case.name)
        logger.info("warmed up %s", case.name)
    for round_index in range(settings.rounds):
        shift = round_index % len(cases)
        for case in list(cases[shift:]) + list(cases[:shift]):
            start = time.perf_counter()
            forward(case.name)
            case.times.append(time.perf_counter() - start)
        logger.info("round %d/%d done", round_index + 1, settings.rounds)
    peaks = {case.name: peak_memory_bytes(lambda n=case.name: forward(n)) for case in cases}

    reference = statistics.median(cases[0].times)
    results = []
    for case in cases:
        median = statistics.median(case.times)
        macs, params = static[case.name]
        results.append(
            CaseResult(
                name=case.name,
                images_per_s=settings.batch / median,
                median_ms=1000 * median,
                min_ms=1000 * min(case.times),
                max_ms=1000 * max(case.times),
                spread_pct=100 * (max(case.times) - min(case.times)) / median,
                relative_speed=reference / median,
                gmacs=macs / 1e9,
                params_m=params / 1e6,
                gmacs_per_s=macs / 1e9 / median,
                peak_memory_mb=peaks[case.name] / 2**20,
            )
        )
    return results


# --------------------------------------------------------------------------- output

COLUMNS = (
    ("name", "model", "{}"),
    ("images_per_s", "img/s", "{:.3f}"),
    ("median_ms", "median ms", "{:.1f}"),
    ("min_ms", "min ms", "{:.1f}"),
    ("max_ms", "max ms", "{:.1f}"),
    ("spread_pct", "spread %", "{:.1f}"),
    ("relative_speed", "speed vs first", "{:.3f}"),
    ("gmacs", "GMACs", "{:.1f}"),
    ("params_m", "params M", "{:.2f}"),
    ("gmacs_per_s", "GMAC/s", "{:.1f}"),
    ("peak_memory_mb", "peak MB", "{:.0f}"),
)


def format_table(results: Sequence[CaseResult]) -> str:
    """A Markdown table of the results."""
    rows = [[fmt.format(getattr(r, key)) for key, _, fmt in COLUMNS] for r in results]
    header = [title for _, title, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def results_as_dicts(results: Sequence[CaseResult]) -> list[dict]:
    """The results as plain dicts (for CSV and JSON)."""
    return [asdict(r) for r in results]
