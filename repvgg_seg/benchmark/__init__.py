"""Inference speed of segmentors, training-time and deployed, measured in one interleaved run.

Every case is timed in the same rounds (:mod:`.timing`); besides time the benchmark reports
multiply-accumulates (:mod:`.counting`), parameters, effective GMAC/s and the peak memory of
one forward pass (:mod:`.memory`), and each rate's share of the host's peak for its precision,
measured in the same run (:mod:`.peaks`). On CUDA a case can also run compiled or replayed
from a CUDA graph (its *treatment*, :mod:`.cuda`); on CPU a deployed segmentor can also run
in bfloat16, ONNX Runtime or OpenVINO, in float32 or INT8 (its *runtime*, :mod:`.runtimes`),
and given ONNX files run as they are beside it (:mod:`.onnx_files`).
:mod:`.tables` formats the results and writes them as CSV and JSON, :mod:`.machine`
describes the host, and :mod:`.request` turns one typed request (what ``tools/benchmark.py``
parses its command line into) into cases, a run and its report.
"""

from .cases import VARIANTS, segmentor_cases, with_treatments
from .counting import count_macs
from .cuda import capture_graph, cuda_settings
from .machine import SIMD_FLAGS, cpu_info, describe_machine
from .memory import cuda_peak_memory_bytes, peak_memory_bytes
from .models import BackboneOnly, deployed_copy, plain_repvgg
from .onnx_files import ENGINES, OnnxFile, check_onnx_file, check_onnx_files
from .peaks import CpuPeaks, CpuPeakSampler, matmul_tflops
from .request import (
    PARTS,
    BenchmarkReport,
    BenchmarkRequest,
    build_cases,
    parse_choices,
    run_request,
    settings_for_device,
    winograd_summary,
)
from .runtimes import RuntimeRunners
from .settings import PRECISIONS, RUNTIMES, TREATMENTS, BenchmarkSettings, Case, CaseResult
from .tables import (
    COLUMNS,
    CSV_HEADER,
    check_report_path,
    check_report_paths,
    format_table,
    results_as_dicts,
    write_report_files,
)
from .timing import make_forward, prepare_module, run_benchmark, time_once, treatment_of

__all__ = [
    "COLUMNS",
    "CSV_HEADER",
    "ENGINES",
    "PARTS",
    "PRECISIONS",
    "RUNTIMES",
    "SIMD_FLAGS",
    "TREATMENTS",
    "VARIANTS",
    "BackboneOnly",
    "BenchmarkReport",
    "BenchmarkRequest",
    "BenchmarkSettings",
    "Case",
    "CaseResult",
    "OnnxFile",
    "CpuPeakSampler",
    "CpuPeaks",
    "RuntimeRunners",
    "build_cases",
    "check_onnx_file",
    "check_onnx_files",
    "capture_graph",
    "check_report_path",
    "check_report_paths",
    "count_macs",
    "cpu_info",
    "cuda_peak_memory_bytes",
    "cuda_settings",
    "deployed_copy",
    "describe_machine",
    "format_table",
    "make_forward",
    "matmul_tflops",
    "parse_choices",
    "peak_memory_bytes",
    "plain_repvgg",
    "prepare_module",
    "results_as_dicts",
    "run_benchmark",
    "run_request",
    "segmentor_cases",
    "settings_for_device",
    "time_once",
    "treatment_of",
    "winograd_summary",
    "with_treatments",
    "write_report_files",
]
