"""What a benchmark run is made of: its settings, its cases and one case's measurements."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import UsageError

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TREATMENTS = ("eager", "graph", "compile", "compile+graph")

# Runtime -> the precision its rows are compared with (None: the settings' precision).
RUNTIMES = {
    "torch": None,
    "torch-bf16": "bf16",
    "onnxruntime": "fp32",
    "onnxruntime-int8": "int8",
    "openvino": "fp32",
    "openvino-int8": "int8",
}


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
                raise UsageError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.warmup < 0:
            raise UsageError(f"warmup must be >= 0, got {self.warmup}.")
        if self.precision not in PRECISIONS:
            raise UsageError(
                f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}."
            )
        device = torch.device(self.device)
        if device.type not in ("cpu", "cuda"):
            raise UsageError(f"device must be 'cpu' or 'cuda', got {self.device!r}.")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(
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
    ``runtime`` (one of :data:`RUNTIMES`) says what runs it: ``torch`` as the settings say,
    or the module converted for another runtime or precision
    (:mod:`repvgg_seg.benchmark.runtimes`; CPU only). ``onnx_file``: an ONNX runtime runs
    this given file instead of the module's export (the module still gives the case's
    MACs and parameters: the deployed model of the config the file was exported from).
    """

    name: str
    module: nn.Module
    treatment: str | None = None
    runtime: str = "torch"
    onnx_file: Path | None = None
    times: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.treatment is not None and self.treatment not in TREATMENTS:
            raise UsageError(
                f"{self.name}: treatment must be one of {TREATMENTS}, got {self.treatment!r}."
            )
        if self.runtime not in RUNTIMES:
            raise UsageError(
                f"{self.name}: runtime must be one of {tuple(RUNTIMES)}, got {self.runtime!r}."
            )
        if self.onnx_file is not None and not self.runtime.startswith(("onnxruntime", "openvino")):
            raise UsageError(f"{self.name}: an ONNX file runs in onnxruntime or openvino only.")

    def precision(self, settings: BenchmarkSettings) -> str:
        """The precision the case computes in (``int8`` for quantized runtimes)."""
        return RUNTIMES[self.runtime] or settings.precision


@dataclass(frozen=True)
class CaseResult:
    """The measurements of one case (times in seconds per forward pass).

    ``matmul_pct`` is the case's rate as a share of the peak rate measured for its
    precision in the same run (the dense matmul rate on CUDA; the best of conv and matmul in
    float32, the matmul rate in bf16 and int8 on CPU). ``peak_memory_mb`` is ``None`` where
    the runtime allocates outside PyTorch.
    """

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
    peak_memory_mb: float | None
    tflops: float
    matmul_pct: float | None = None
    runtime: str = "torch"
    precision: str = "fp32"
