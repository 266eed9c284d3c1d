"""Inference speed of segmentors, training-time and deployed, measured in one interleaved run.

Every case is timed in the same rounds (:mod:`.timing`); besides time the benchmark reports
multiply-accumulates (:mod:`.counting`), parameters, effective GMAC/s and the peak memory of
one forward pass (:mod:`.memory`), and each rate's share of the host's peak for its precision,
measured in the same run (:mod:`.peaks`). On CUDA a case can also run compiled or replayed
from a CUDA graph (its *treatment*, :mod:`.cuda`); on CPU a deployed segmentor can also run
in bfloat16, ONNX Runtime or OpenVINO, in float32 or INT8 (its *runtime*, :mod:`.runtimes`).
:mod:`.tables` formats the results and :mod:`.machine` describes the host.
"""

from .cases import VARIANTS, segmentor_cases, with_treatments
from .counting import count_macs
from .cuda import capture_graph, cuda_settings
from .machine import SIMD_FLAGS, cpu_info, describe_machine
from .memory import cuda_peak_memory_bytes, peak_memory_bytes
from .models import BackboneOnly, deployed_copy, plain_repvgg
from .peaks import CpuPeaks, CpuPeakSampler, cpu_peaks, matmul_tflops
from .runtimes import RuntimeRunners
from .settings import PRECISIONS, RUNTIMES, TREATMENTS, BenchmarkSettings, Case, CaseResult
from .tables import COLUMNS, format_table, results_as_dicts
from .timing import make_forward, prepare_module, run_benchmark, time_once, treatment_of

__all__ = [
    "COLUMNS",
    "PRECISIONS",
    "RUNTIMES",
    "SIMD_FLAGS",
    "TREATMENTS",
    "VARIANTS",
    "BackboneOnly",
    "BenchmarkSettings",
    "Case",
    "CaseResult",
    "CpuPeakSampler",
    "CpuPeaks",
    "RuntimeRunners",
    "capture_graph",
    "count_macs",
    "cpu_info",
    "cpu_peaks",
    "cuda_peak_memory_bytes",
    "cuda_settings",
    "deployed_copy",
    "describe_machine",
    "format_table",
    "make_forward",
    "matmul_tflops",
    "peak_memory_bytes",
    "plain_repvgg",
    "prepare_module",
    "results_as_dicts",
    "run_benchmark",
    "segmentor_cases",
    "time_once",
    "treatment_of",
    "with_treatments",
]
