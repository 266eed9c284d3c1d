"""A deployed segmentor run by other runtimes and precisions than the benchmark's torch one.

Each runtime turns the case's float32 module into a no-argument function that runs one
forward pass of a fixed input (what :mod:`repvgg_seg.benchmark.timing` times):

- ``torch-bf16``: bfloat16 weights and input, channels-last (oneDNN's bf16 kernels);
- ``onnxruntime`` / ``onnxruntime-int8``: the ONNX graph of :func:`repvgg_seg.deploy.export_onnx`
  in ONNX Runtime, float32 or statically quantized to INT8 (QDQ, per-channel weights);
- ``openvino`` / ``openvino-int8``: the same ONNX files in OpenVINO, the float32 one
  (inference precision pinned to f32: OpenVINO would pick bf16 on CPUs with AMX) or the
  INT8 QDQ one, which OpenVINO runs with int8 kernels for every conv. NNCF's own
  quantization of the float graph left B1g2-fast's grouped convs and its PSP bottleneck
  conv in float32 (docs/benchmarks.md).

INT8 models are calibrated on random inputs: their speed does not depend on the values, only
on the graph. Every runtime gets the thread count torch has, and ONNX Runtime's idle threads
do not spin, so that the interleaved cases do not steal each other's cores.
"""

from __future__ import annotations

import copy
import functools
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..deploy import export_onnx
from ..errors import UsageError
from ..host import cpu_info
from ..onnx_session import open_session
from .settings import RUNTIMES

logger = logging.getLogger(__name__)

CALIBRATION_INPUTS = 2
"""Random inputs INT8 calibration sees (its ranges only set scales, not the speed)."""


def segmentor_of(module: nn.Module, runtime: str) -> nn.Module:
    """The segmentor inside a case's ``SegmentorLogits`` module (what ONNX export takes)."""
    segmentor = getattr(module, "segmentor", None)
    if segmentor is None:
        raise UsageError(
            f"runtime {runtime!r} exports the whole segmentor to ONNX; time it with "
            "--part segmentor (a backbone or a plain network has no ONNX path here)."
        )
    return segmentor


class RuntimeRunners:
    """Builds each case's forward function; one ONNX export per module, in a temporary folder.

    Use as a context manager: the exported files are removed on exit (the runtimes keep the
    models they loaded in memory).

    Args:
        calibration_inputs: Random inputs for INT8 calibration.
        threads: Threads each runtime uses (default: torch's).
    """

    def __init__(self, calibration_inputs: int = CALIBRATION_INPUTS, threads: int | None = None):
        self.calibration_inputs = calibration_inputs
        self.threads = threads or torch.get_num_threads()
        self._folder: tempfile.TemporaryDirectory | None = None
        self._exports: dict[tuple[int, str], Path] = {}

    def __enter__(self) -> RuntimeRunners:
        self._folder = tempfile.TemporaryDirectory(prefix="repvgg_seg_benchmark.")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._folder.cleanup()
        self._folder, self._exports = None, {}

    def runner(
        self,
        module: nn.Module,
        runtime: str,
        image: torch.Tensor,
        onnx_file: Path | None = None,
    ) -> Callable[[], object]:
        """One forward pass of ``image`` (float32, NCHW) by ``module`` under ``runtime``, or
        by the given ``onnx_file`` as it is (ONNX Runtime or OpenVINO, ``-int8`` or not)."""
        if runtime not in RUNTIMES or runtime == "torch":
            raise ValueError(f"runtime must be one of {tuple(RUNTIMES)[1:]}, got {runtime!r}.")
        if onnx_file is not None and runtime.startswith("torch"):
            raise ValueError(f"an ONNX file runs in onnxruntime or openvino, not {runtime!r}.")
        if runtime == "torch-bf16":
            return bf16_runner(module, image)
        array = image.float().contiguous().numpy()
        if onnx_file is not None:
            run = onnxruntime_runner if runtime.startswith("onnxruntime") else openvino_runner
            return run(Path(onnx_file), array, self.threads)
        if runtime.startswith("onnxruntime"):
            return onnxruntime_runner(self._onnx(module, runtime, image), array, self.threads)
        # OpenVINO reads the same files as ONNX Runtime: one INT8 model for both runtimes.
        onnx_runtime = "onnxruntime-int8" if runtime.endswith("int8") else "onnxruntime"
        return openvino_runner(self._onnx(module, onnx_runtime, image), array, self.threads)

    def _calibration(self, image: torch.Tensor) -> list[np.ndarray]:
        generator = torch.Generator().manual_seed(0)
        shape = (1, *image.shape[1:])
        return [
            torch.randn(shape, generator=generator).numpy() for _ in range(self.calibration_inputs)
        ]

    def _onnx(self, module: nn.Module, runtime: str, image: torch.Tensor) -> Path:
        """The module's ONNX file for ``runtime``: float32, or INT8 (QDQ) for ``*-int8``."""
        # Cases wrap one deployed segmentor each in their own module: the segmentor is the key.
        key = (id(segmentor_of(module, runtime)), runtime)
        if key in self._exports:
            return self._exports[key]
        folder = Path(self._folder.name)
        if runtime.endswith("int8"):
            float_path = self._onnx(module, "onnxruntime", image)
            path = folder / f"{len(self._exports)}_int8.onnx"
            quantize_onnx_int8(float_path, path, self._calibration(image))
        else:
            path = folder / f"{len(self._exports)}.onnx"
            segmentor = copy.deepcopy(segmentor_of(module, runtime)).float().eval()
            export_onnx(segmentor, path, image[:1].float().contiguous())
        logger.info("wrote %s for %s", path.name, runtime)
        self._exports[key] = path
        return path


def bf16_runner(module: nn.Module, image: torch.Tensor) -> Callable[[], object]:
    """``module`` in bfloat16 weights and input, channels-last, in inference mode."""
    model = copy.deepcopy(module).eval().to(torch.bfloat16, memory_format=torch.channels_last)
    image = image.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)

    def forward() -> object:
        with torch.no_grad():
            return model(image)

    return forward


def quantize_onnx_int8(float_path: Path, int8_path: Path, batches: list[np.ndarray]) -> None:
    """Static INT8 quantization as ``tools/quantize.py`` does it with its defaults
    (:mod:`repvgg_seg.quantize`: ONNX Runtime's pre-processing, MinMax calibration, QDQ with
    per-channel weights, activations stored as ``--activations auto`` picks on this host)."""
    # ONNX Runtime's quantization tools are a development requirement: imported on use.
    from ..quantize.onnx_quant import (
        activation_format,
        collect_ranges,
        prepare_float_model,
        quantize_model,
        save_model,
        with_uint8_activations,
    )

    prepared_path = int8_path.with_name(f"{int8_path.stem}.prepared.onnx")
    prepared = prepare_float_model(float_path, prepared_path)
    ranges = collect_ranges(prepared_path, batches, "minmax", int8_path.parent)
    quantized = quantize_model(prepared, ranges, per_channel=True)
    if activation_format("auto", cpu_info()[1]) == "uint8":
        quantized = with_uint8_activations(quantized)
    with int8_path.open("wb") as file:  # a scratch file of the runners' temporary folder
        save_model(quantized, file)


def onnxruntime_runner(path: Path, array: np.ndarray, threads: int) -> Callable[[], object]:
    """One ONNX Runtime (CPU) session run of ``array`` on the model at ``path`` (the
    package's session options: :func:`repvgg_seg.onnx_session.open_session`)."""
    session = open_session(path, threads)
    feed = {session.get_inputs()[0].name: array}  # "image" in the package's exports
    return lambda: session.run(None, feed)


OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
"""OpenVINO's CPU settings for every model the benchmark compiles (float32 inference
precision: OpenVINO would pick bf16 on CPUs with AMX; one request at a time)."""


@functools.cache
def openvino_core():
    """The process's one ``openvino.Core``, kept until the process ends.

    OpenVINO 2026.4's CPU plugin installs a signal stack of its own on the thread that first
    compiles a model for a Core, and puts back the one it found when that Core is destroyed.
    Two Cores destroyed in the order they were made leave the thread on the first Core's
    freed stack, and the next signal Python handles there (Ctrl-C, SIGTERM, the SIGCHLD of
    torch's DataLoader) kills the process with SIGSEGV. One Core that lives as long as the
    process never puts a freed stack back (``tests/test_benchmark.py``:
    ``test_openvino_runners_leave_signal_handling_working``).
    """
    import openvino

    return openvino.Core()


def openvino_runner(path: Path, array: np.ndarray, threads: int) -> Callable[[], object]:
    """One OpenVINO (CPU) inference of ``array`` by the ONNX model at ``path`` (float32, or
    INT8 QDQ, whose Quantize/DequantizeLinear pairs OpenVINO turns into int8 kernels)."""
    core = openvino_core()
    model = core.read_model(str(path))
    compiled = core.compile_model(
        model, "CPU", {**OPENVINO_CONFIG, "INFERENCE_NUM_THREADS": threads}
    )
    request = compiled.create_infer_request()
    return lambda: request.infer({0: array})
