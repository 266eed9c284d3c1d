"""Given ONNX files timed beside the configs: each checked before the run, one case per
ONNX runtime named.

``tools/benchmark.py CONFIG --onnx A_int8.onnx B_qat.onnx --runtimes onnxruntime,openvino``
times each file as it is (float32, or INT8 QDQ as ``tools/quantize.py`` and
``tools/qat.py`` write it) in each ONNX runtime named (ONNX Runtime, OpenVINO: the
``-int8`` runtimes name the same engines; a given file is never quantized again), in the
same interleaved rounds as the config's own cases. The config is the one the files were
exported from: it names the rows and its deployed model gives their GMACs and parameters.
A file that is not an ONNX model, or whose input does not take the run's input, is refused
in one line naming it before anything is measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mmengine.config import Config

from ..errors import UsageError
from ..onnx_session import OnnxModelError, open_session
from .settings import BenchmarkSettings

ENGINES = ("onnxruntime", "openvino")
"""The runtimes that run an ONNX file; ``<engine>-int8`` names the same engine."""

QUANTIZED_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger"}
)


def engines_of(runtimes: Sequence[str]) -> tuple[str, ...]:
    """The ONNX engines ``runtimes`` name (``onnxruntime-int8`` names ``onnxruntime``)."""
    named = [runtime.removesuffix("-int8") for runtime in runtimes]
    return tuple(engine for engine in ENGINES if engine in named)


@dataclass(frozen=True)
class OnnxFile:
    """A given ONNX file, checked: its path and whether it is quantized (QDQ or integer ops)."""

    path: Path
    quantized: bool

    def runtime(self, engine: str) -> str:
        """The runtime its rows carry: the engine, with ``-int8`` for a quantized file."""
        return f"{engine}-int8" if self.quantized else engine


def config_classes(cfg: Config) -> int | None:
    """The channels of the config's logits (mmseg: ``out_channels``, else ``num_classes``)."""
    head = cfg.get("model", {}).get("decode_head")
    if not isinstance(head, dict):
        return None
    classes = head.get("out_channels") or head.get("num_classes")
    return int(classes) if classes else None


def check_onnx_file(
    path: Path, settings: BenchmarkSettings, classes: int | None = None
) -> OnnxFile:
    """The file, checked against the run's input (and the config's classes where given).

    Raises:
        UsageError: ``path`` is missing, not an ONNX model ONNX Runtime can load, keeps data
            in external files, or its input or output does not fit (the message names it).
    """
    import onnx

    try:
        session = open_session(path, 1)
    except (OSError, OnnxModelError) as error:
        raise UsageError(f"--onnx: {' '.join(str(error).split())}") from error
    inputs, outputs = session.get_inputs(), session.get_outputs()
    where = f"--onnx {path}"
    feeds = f"{settings.batch}x{settings.channels}x{settings.height}x{settings.width}"
    if len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 4:
        found = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs) or "none"
        raise UsageError(
            f"{where}: its inputs are {found}; the benchmark feeds one float32 N,3,H,W image "
            f"({feeds}); pass a segmentor's ONNX file (tools/deploy.py --onnx, "
            "tools/quantize.py, tools/qat.py)."
        )
    wanted = (settings.batch, settings.channels, settings.height, settings.width)
    shape = inputs[0].shape
    if any(isinstance(dim, int) and dim != want for dim, want in zip(shape, wanted)):
        raise UsageError(
            f"{where}: its input {shape} does not take the benchmark's {feeds}; pass the "
            "--size and -b it takes, or a file with dynamic sizes (as tools/deploy.py --onnx, "
            "tools/quantize.py and tools/qat.py write them)."
        )
    logits = outputs[0].shape if outputs else []
    known = classes is not None and len(logits) == 4 and isinstance(logits[1], int)
    if known and logits[1] != classes:
        raise UsageError(
            f"{where}: it predicts {logits[1]} classes, its config {classes}; pass the "
            "config the file was exported from first."
        )
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    return OnnxFile(Path(path), quantized=bool(ops & QUANTIZED_OPS))


def check_onnx_files(
    paths: Sequence[Path], settings: BenchmarkSettings, cfg: Config
) -> list[OnnxFile]:
    """:func:`check_onnx_file` for each, against the config they were exported from."""
    return [check_onnx_file(path, settings, config_classes(cfg)) for path in paths]
