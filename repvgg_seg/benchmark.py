"""Inference speed of segmentors, training-time and deployed, measured in one interleaved run.

A time alone means little on a shared machine, so every case is timed in the same rounds:
each round runs every case once (in a rotated order), and the report gives per-case medians,
the spread over rounds and the speed ratio to the first case. Besides time it reports
multiply-accumulates (convs and linears, counted by hooks), parameters, effective GMAC/s
and the peak memory of one forward pass (CPU: every allocation, from the profiler; CUDA:
``torch.cuda.max_memory_allocated``).

On CUDA, times come from CUDA events around each forward pass (synchronized), with cuDNN's
autotuner on; a case can also run compiled (``torch.compile``) or replayed from a CUDA graph
(its *treatment*), so every model can be given the same menu in one run.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .deploy import deploy_segmentor, enable_winograd
from .models.arch import DILATION_MODES, get_arch, layer_plan
from .models.blocks import fused_conv3x3

logger = logging.getLogger(__name__)


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TREATMENTS = ("eager", "graph", "compile", "compile+graph")


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
        precision: ``fp32``, ``fp16`` or ``bf16``.
        autocast: Reach ``precision`` by autocast (float32 weights); otherwise the weights and
            the input are cast to it.
        compile: ``torch.compile`` every case whose treatment does not say otherwise.
        compile_mode: ``torch.compile`` mode (``default``, ``max-autotune``, ...).
        device: ``cpu`` or ``cuda`` (``cuda:N``).
        tf32: CUDA only: allow TF32 in float32 convs and matmuls (``None``: leave torch's
            settings as they are).
        channels: Input channels (3 for images; a layer's width for single-layer cases).
    """

    height: int = 713
    width: int = 713
    batch: int = 1
    warmup: int = 1
    rounds: int = 5
    channels_last: bool = False
    precision: str = "fp32"
    autocast: bool = False
    compile: bool = False
    compile_mode: str = "default"
    device: str = "cpu"
    tf32: bool | None = None
    channels: int = 3

    def __post_init__(self) -> None:
        for name in ("height", "width", "batch", "rounds", "channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}.")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}."
            )
        device = torch.device(self.device)
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}.")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device {self.device!r} asked for, but torch {torch.__version__} sees no CUDA "
                "GPU here; run with --device cpu."
            )

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    @property
    def is_cuda(self) -> bool:
        return torch.device(self.device).type == "cuda"


@dataclass
class Case:
    """One model to time: a name and a module mapping an image batch to an output.

    ``treatment`` (one of :data:`TREATMENTS`, or ``None`` for the settings' default) says
    how it runs: eagerly, replayed from a CUDA graph, compiled, or compiled and replayed.
    """

    name: str
    module: nn.Module
    treatment: str | None = None
    times: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.treatment is not None and self.treatment not in TREATMENTS:
            raise ValueError(
                f"{self.name}: treatment must be one of {TREATMENTS}, got {self.treatment!r}."
            )


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
    tflops: float
    matmul_pct: float | None = None


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

    The reference for "no overhead from our abstractions": the backbone's own layer plan
    (:func:`repvgg_seg.models.arch.layer_plan`: widths, groups, strides, dilations), none of
    its modules.
    """
    plan = layer_plan(get_arch(arch_name), *DILATION_MODES[dilation_mode])
    layers: list[nn.Module] = []
    for spec in (spec for stage in plan for spec in stage):
        conv = fused_conv3x3(
            spec.in_channels, spec.out_channels, spec.stride, spec.dilation, spec.groups
        )
        layers += [conv, nn.ReLU()]
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

    ``graph`` treatments warm up on a side stream, capture one pass into a CUDA graph and
    return its replay (same input buffer, so the timing includes no copies).
    """
    if treatment not in TREATMENTS:
        raise ValueError(f"treatment must be one of {TREATMENTS}, got {treatment!r}.")
    if "graph" in treatment and not settings.is_cuda:
        raise ValueError(f"treatment {treatment!r} needs a CUDA device, got {settings.device!r}.")
    if treatment.startswith("compile"):
        module = torch.compile(module, mode=settings.compile_mode)

    def forward() -> object:
        with torch.no_grad(), _autocast(settings):
            return module(image)

    if "graph" not in treatment:
        return forward
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


def time_once(run: Callable[[], object], settings: BenchmarkSettings) -> float:
    """Seconds of one call of ``run``: CUDA events (synchronized) on CUDA, a wall clock on CPU."""
    if settings.is_cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    start_time = time.perf_counter()
    run()
    return time.perf_counter() - start_time


def cuda_peak_memory_bytes(run: Callable[[], object]) -> int:
    """Peak CUDA memory allocated while ``run()`` executes, beyond what was held before."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    held = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - held


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
    for _ in range(3):
        torch.matmul(a, b)
    seconds = statistics.median(
        time_once(lambda: torch.matmul(a, b), settings) for _ in range(repeats)
    )
    return 2 * size**3 / seconds / 1e12


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


def run_benchmark(
    cases: Sequence[Case], settings: BenchmarkSettings, matmul_rate: float | None = None
) -> list[CaseResult]:
    """Times every case in interleaved rounds and measures MACs, parameters and memory.

    Args:
        cases: The models; each is moved to the device and cast as ``settings`` says.
        settings: How to run them.
        matmul_rate: The device's measured matmul TFLOP/s (:func:`matmul_tflops`); when given,
            each result states its share of it.

    Returns:
        One result per case, in the order given; ``relative_speed`` is each case's speed
        divided by the first case's.
    """
    if not cases:
        raise ValueError("Nothing to benchmark: pass at least one case.")
    names = [case.name for case in cases]
    if len(set(names)) != len(names):
        raise ValueError(f"Case names must be unique, got {names}.")
    with cuda_settings(settings) if settings.is_cuda else contextlib.nullcontext():
        return _run_benchmark(cases, settings, matmul_rate)


def _run_benchmark(
    cases: Sequence[Case], settings: BenchmarkSettings, matmul_rate: float | None
) -> list[CaseResult]:
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(
        settings.batch, settings.channels, settings.height, settings.width, generator=generator
    ).to(settings.device)
    if not settings.autocast:
        image = image.to(settings.dtype)
    if settings.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)

    static, forwards, peaks = {}, {}, {}
    for case in cases:
        module = prepare_module(case.module, settings)
        params = sum(p.numel() for p in module.parameters())
        with torch.no_grad(), _autocast(settings):
            macs = count_macs(module, image[:1]) * settings.batch
        static[case.name] = (macs, params)
        eager = make_forward(module, image, "eager", settings)
        eager()  # cuDNN's autotuner tries algorithms (and their workspaces) on the first pass
        peaks[case.name] = (
            cuda_peak_memory_bytes(eager) if settings.is_cuda else peak_memory_bytes(eager)
        )
        forwards[case.name] = make_forward(module, image, treatment_of(case, settings), settings)
        for _ in range(settings.warmup):
            forwards[case.name]()
        logger.info("warmed up %s", case.name)
    for round_index in range(settings.rounds):
        shift = round_index % len(cases)
        for case in list(cases[shift:]) + list(cases[:shift]):
            case.times.append(time_once(forwards[case.name], settings))
        logger.info("round %d/%d done", round_index + 1, settings.rounds)

    reference = statistics.median(cases[0].times)
    results = []
    for case in cases:
        median = statistics.median(case.times)
        macs, params = static[case.name]
        tflops = 2 * macs / median / 1e12
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
                tflops=tflops,
                matmul_pct=100 * tflops / matmul_rate if matmul_rate else None,
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
    ("tflops", "TFLOP/s", "{:.2f}"),
    ("matmul_pct", "% of matmul rate", "{:.0f}"),
    ("peak_memory_mb", "peak MB", "{:.0f}"),
)


def format_table(results: Sequence[CaseResult]) -> str:
    """A Markdown table of the results (columns that no result fills are left out)."""
    columns = [c for c in COLUMNS if any(getattr(r, c[0]) is not None for r in results)]
    rows = [[fmt.format(getattr(r, key)) for key, _, fmt in columns] for r in results]
    header = [title for _, title, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def results_as_dicts(results: Sequence[CaseResult]) -> list[dict]:
    """The results as plain dicts (for CSV and JSON)."""
    return [asdict(r) for r in results]


def describe_machine(settings: BenchmarkSettings) -> str:
    """What the numbers were measured on, read from the machine at run time.

    CUDA: GPU name and memory, torch, CUDA and cuDNN versions, TF32 state. CPU: the model
    name and SIMD flags from ``/proc/cpuinfo``, torch's CPU capability and thread count.
    """
    if settings.is_cuda:
        device = torch.device(settings.device)
        props = torch.cuda.get_device_properties(device)
        tf32 = {None: "torch default", True: "on", False: "off"}[settings.tf32]
        return (
            f"GPU {props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, TF32 {tf32}"
        )
    model, flags = cpu_info()
    return (
        f"CPU {model}, flags {' '.join(flags) or 'none of interest'}, torch CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )


SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


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
