"""A whole benchmark run as one typed request: its cases, the host's peaks, the report.

``tools/benchmark.py`` parses its command line into a :class:`BenchmarkRequest` and calls
:func:`run_request`; everything between (which cases a request means, the device's
defaults, the header that names the host, the Winograd decisions) lives here, so that
tests and other callers use it without the command line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from mmengine.config import Config

from ..deploy.autotune import AUTOTUNER, WINOGRAD_MODES
from ..errors import UsageError
from ..loader import build_segmentor
from ..models.arch import DILATION_MODES
from .cases import VARIANTS, segmentor_cases, with_treatments
from .cuda import cuda_settings
from .machine import describe_machine
from .models import plain_repvgg
from .onnx_files import ENGINES, check_onnx_files, engines_of
from .peaks import CpuPeakSampler, matmul_tflops
from .runtimes import RuntimeRunners
from .settings import RUNTIMES, TREATMENTS, BenchmarkSettings, Case, CaseResult
from .tables import format_table, results_as_dicts
from .timing import run_benchmark

PARTS = ("segmentor", "backbone")


def parse_choices(text: str | None, allowed: tuple[str, ...], option: str) -> tuple[str, ...]:
    """A comma-separated option's values, each checked against ``allowed``.

    Raises:
        UsageError: A value is not in ``allowed`` (the message names ``option``).
    """
    values = tuple(v.strip() for v in (text or "").split(",") if v.strip())
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise UsageError(f"{option}: unknown {unknown}; use any of {', '.join(allowed)}.")
    return values


def settings_for_device(
    device: str = "cpu", batch: int | None = None, tf32: bool | None = None, **fields
) -> BenchmarkSettings:
    """:class:`BenchmarkSettings` with the device's defaults for what is not given.

    On CUDA: batch 16 (paper Table 8's setting) and TF32 off, stated in the header. On CPU:
    batch 1, and TF32 (a CUDA setting) refused.

    Raises:
        UsageError: TF32 asked for on CPU, or a field out of range (``BenchmarkSettings``).
    """
    on_cuda = torch.device(device).type == "cuda"
    if tf32 is not None and not on_cuda:
        raise UsageError("--tf32 applies to CUDA devices only; add --device cuda.")
    return BenchmarkSettings(
        device=device,
        batch=batch if batch is not None else 16 if on_cuda else 1,
        tf32=tf32 if tf32 is not None or not on_cuda else False,
        **fields,
    )


@dataclass(frozen=True)
class BenchmarkRequest:
    """What one benchmark run times, and how.

    Attributes:
        settings: How every case runs (input, precision, device, rounds).
        configs: Case name prefix (a config's stem) -> the loaded config.
        variants: Of :data:`repvgg_seg.benchmark.cases.VARIANTS`, under the ``torch`` runtime.
        runtimes: Of :data:`repvgg_seg.benchmark.settings.RUNTIMES`; other than ``torch``
            they time the deployed segmentor on CPU.
        treatments: Of :data:`repvgg_seg.benchmark.settings.TREATMENTS` (none: the
            settings' default), each torch case timed under each.
        winograd: The ``winograd`` variant's mode (``off`` leaves it out).
        part: ``segmentor`` (logits at the input size) or ``backbone`` (its last output).
        plain_repvgg: ``ARCH[:MODE]`` specs of plain Conv2d+ReLU RepVGGs to time too.
        calibration_inputs: Random inputs that calibrate the INT8 runtimes.
        peak_size: CPU: side of the square matmuls that measure the host's peak rates.
        onnx_files: ONNX files of the first config's model (float32, or INT8 from
            ``tools/quantize.py`` / ``tools/qat.py``), each timed as it is in each ONNX
            engine ``runtimes`` names (:mod:`.onnx_files`), checked before anything is built.
    """

    settings: BenchmarkSettings
    configs: Mapping[str, Config] = field(default_factory=dict)
    variants: tuple[str, ...] = VARIANTS
    runtimes: tuple[str, ...] = ("torch",)
    treatments: tuple[str, ...] = ()
    winograd: str = "auto"
    part: str = "segmentor"
    plain_repvgg: tuple[str, ...] = ()
    calibration_inputs: int = 2
    peak_size: int = 2048
    onnx_files: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        for option, values, allowed in (
            ("--variants", self.variants, VARIANTS),
            ("--runtimes", self.runtimes, tuple(RUNTIMES)),
            ("--treatments", self.treatments, TREATMENTS),
            ("--winograd", (self.winograd,), WINOGRAD_MODES),
            ("--part", (self.part,), PARTS),
        ):
            parse_choices(",".join(values), allowed, option)
        if set(self.runtimes) - {"torch"} and (self.part == "backbone" or self.settings.is_cuda):
            raise UsageError(
                f"--runtimes {','.join(self.runtimes)}: runtimes other than torch time the "
                "whole deployed segmentor on CPU; drop --part backbone / --device, or use "
                "--runtimes torch."
            )
        if self.calibration_inputs < 1 or self.peak_size < 16:
            raise UsageError(
                f"--calib-inputs must be >= 1 and --peak-size >= 16, got "
                f"{self.calibration_inputs} and {self.peak_size}."
            )
        for spec in self.plain_repvgg:
            mode = spec.partition(":")[2] or "fast"
            if mode not in DILATION_MODES:
                raise UsageError(
                    f"--plain-repvgg {spec}: unknown dilation mode {mode!r}; use one of "
                    f"{', '.join(DILATION_MODES)}."
                )
        if self.onnx_files:
            self._check_onnx_request()
        if not self.configs and not self.plain_repvgg:
            raise UsageError("Nothing to benchmark: give configs and/or --plain-repvgg.")

    def _check_onnx_request(self) -> None:
        files = ", ".join(str(path) for path in self.onnx_files)
        if not self.configs:
            raise UsageError(
                f"--onnx {files}: give the config the files were exported from first (it "
                "names the rows and gives their GMACs)."
            )
        if not engines_of(self.runtimes):
            raise UsageError(
                f"--onnx {files}: --runtimes {','.join(self.runtimes)} names no ONNX runtime; "
                f"add any of {', '.join(ENGINES)} (each file runs as it is in each)."
            )
        if len({Path(path).resolve() for path in self.onnx_files}) != len(self.onnx_files):
            raise UsageError(f"--onnx {files}: a file is given twice; give each once.")


def build_cases(request: BenchmarkRequest) -> list[Case]:
    """Every config's cases (:func:`segmentor_cases`; the first one's with the ONNX files,
    all checked first), the plain networks, the treatments."""
    files = []
    if request.onnx_files:
        first = next(iter(request.configs.values()))
        files = check_onnx_files(request.onnx_files, request.settings, first)
    cases = []
    for index, (name, cfg) in enumerate(request.configs.items()):
        trained = build_segmentor(cfg)
        cases += segmentor_cases(
            name,
            trained,
            request.variants,
            request.runtimes,
            request.winograd,
            request.part,
            onnx_files=files if index == 0 else (),
        )
    for spec in request.plain_repvgg:
        arch, _, mode = spec.partition(":")
        cases.append(
            Case(f"plain RepVGG-{arch}-{mode or 'fast'}", plain_repvgg(arch, mode or "fast"))
        )
    if not cases:
        raise UsageError(
            f"Nothing to benchmark: --variants {','.join(request.variants)} with --runtimes "
            f"{','.join(request.runtimes)} leaves no case."
        )
    torch_cases = with_treatments([c for c in cases if c.runtime == "torch"], request.treatments)
    return torch_cases + [c for c in cases if c.runtime != "torch"]


def winograd_summary() -> str | None:
    """How many conv shapes ``auto`` Winograd found faster (None when nothing was tuned)."""
    decisions = AUTOTUNER.decisions.values()
    if not decisions:
        return None
    faster = sum(winograd < direct for direct, winograd in decisions)
    return (
        f"Winograd auto: faster than the direct conv for {faster} of {len(decisions)} conv shapes"
    )


@dataclass
class BenchmarkReport:
    """What a run measured: the header lines naming the run and the host, and the results.

    Attributes:
        header: What was timed and how, the host, its measured peaks, Winograd's decisions.
        results: One per case, in the request's order.
        record: The whole run as plain data (the JSON file).
    """

    header: list[str]
    results: list[CaseResult]
    record: dict

    def text(self) -> str:
        """The header and the Markdown table, as the tool prints them."""
        return "\n".join([*self.header, format_table(self.results)])


def _describe_run(request: BenchmarkRequest) -> str:
    settings = request.settings
    precision = settings.precision
    if precision != "fp32":
        precision += " autocast" if settings.autocast else " weights and input"
    layout = "channels_last" if settings.channels_last else "NCHW"
    return (
        f"{request.part}, input {settings.batch}x3x{settings.height}x{settings.width}, "
        f"{precision}, {layout}, {settings.rounds} rounds on {settings.device}"
    )


def run_request(request: BenchmarkRequest) -> BenchmarkReport:
    """Builds the request's cases, times them in one interleaved run and reports.

    On CUDA the dense matmul rate in the run's precision is measured first; on CPU the
    host's peak rates are sampled after every round (:class:`CpuPeakSampler`), so that each
    row's share of its precision's peak sees the same load as the row.
    """
    settings = request.settings
    cases = build_cases(request)
    matmul_rate, sampler = None, None
    if settings.is_cuda:
        with cuda_settings(settings):
            matmul_rate = matmul_tflops(settings)
    else:
        sampler = CpuPeakSampler(request.peak_size, conv_size=max(8, request.peak_size // 32))
    with RuntimeRunners(calibration_inputs=request.calibration_inputs) as runners:
        results = run_benchmark(cases, settings, matmul_rate, runners=runners, peak_sampler=sampler)
    peaks = sampler.peaks() if sampler else None
    machine = describe_machine(settings)
    header = [_describe_run(request), machine]
    if matmul_rate is not None:
        header.append(
            f"dense {settings.precision} matmul (8192^3, measured now): {matmul_rate:.0f} TFLOP/s"
        )
    header += [line for line in (peaks and peaks.describe(), winograd_summary()) if line]
    record = {
        "settings": asdict(settings),
        "machine": machine,
        "matmul_tflops": matmul_rate,
        "cpu_peaks_gmacs": peaks and asdict(peaks),
        "onnx_files": [str(path) for path in request.onnx_files],
        "results": results_as_dicts(results),
    }
    return BenchmarkReport(header, results, record)
