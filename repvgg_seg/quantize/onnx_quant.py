"""Static INT8 quantization of an ONNX segmentor with ONNX Runtime's tooling (QDQ, S8S8).

The steps of ``onnxruntime.quantization.quantize_static``, taken apart so that the
calibration runs once and its ranges serve every quantization of the same model (the
per-conv sensitivity ranking quantizes the model once per conv):

1. :func:`prepare_float_model`: ONNX Runtime's pre-processing (shape inference, constant
   folding), and Conv nodes named after the PyTorch modules they came from;
2. :func:`collect_ranges`: the calibrator runs the calibration images one at a time (its
   histogram methods keep every activation of the images it holds);
3. :func:`quantize_model`: QDQ pairs with signed 8-bit activations and weights, the format
   ONNX Runtime's docs recommend first on x86-64 (and the one TensorRT and OpenVINO read).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantType,
    create_calibrator,
)
from onnxruntime.quantization.calibrate import TensorsData
from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
from onnxruntime.quantization.quant_utils import save_and_reload_model_with_shape_infer
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
from onnxruntime.quantization.shape_inference import quant_pre_process

from ..errors import UsageError

Progress = Callable[[], None]

# --calib-method names -> ONNX Runtime's calibration methods. Not its Entropy (KL) method:
# its thresholds cut the fused backbone's activations to about half their range, and it lost
# 1.2-1.9 mIoU on the demo model with 8 or 32 images and any histogram size, all of it from
# the backbone's tensors (docs/quantization.md).
CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
}
# Every op type ONNX Runtime quantizes (quantize_static's default) but MatMul: a segmentor's
# MatMuls are the export's shape-generic pooling and resizing (repvgg_seg.deploy.onnx_export),
# whose left operand is a matrix of averaging or interpolation weights built from the input's
# size (see size_computations). Rounded to 8 bits, 1/8192 (the global pool of a 64 x 128
# map) shares a scale with 1/231 (a bin of the 6 x 6 pool), and the range calibrated at one
# size is wrong at the next; OpenVINO runs these MatMuls in float32 either way.
QUANTIZED_OP_TYPES = sorted((set(QLinearOpsRegistry) | set(QDQRegistry)) - {"MatMul"})
ACTIVATION_TYPE = QuantType.QInt8
WEIGHT_TYPE = QuantType.QInt8
# The exporter records each node's PyTorch module path in this metadata entry.
_NAME_SCOPES = "pkg.torch.onnx.name_scopes"


@contextlib.contextmanager
def quiet_onnxruntime_tools() -> Iterator[None]:
    """Keeps the quantization tooling's warnings (root logger) and the histogram
    calibrators' prints off the console."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def module_name(node: onnx.NodeProto) -> str | None:
    """The PyTorch module a node was exported from (``backbone.stage1.0.conv``), if known."""
    for entry in node.metadata_props:
        if entry.key == _NAME_SCOPES:
            # ['', 'segmentor', ..., 'segmentor.backbone.stem.fused_conv', 'conv2d']: the last
            # module scope; SegmentorLogits holds the segmentor as ``segmentor``.
            scopes = [s.strip(" '\"") for s in entry.value.strip("[]").split(",")]
            modules = [s for s in scopes if s.startswith("segmentor.")]
            if modules:
                return modules[-1].removeprefix("segmentor.")
    return None


def name_convs_after_modules(model: onnx.ModelProto) -> list[str]:
    """Renames every Conv node to its PyTorch module's name (unique; ``#2`` for a repeat).

    Returns:
        The Conv node names, in graph order.
    """
    used = {node.name for node in model.graph.node if node.op_type != "Conv"}
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        base = module_name(node) or node.name
        name, count = base, 1
        while name in used:
            count += 1
            name = f"{base}#{count}"
        node.name = name
        used.add(name)
        names.append(name)
    return names


def conv_names(model: onnx.ModelProto) -> list[str]:
    """The Conv nodes of a graph, in graph order."""
    return [node.name for node in model.graph.node if node.op_type == "Conv"]


def prepare_float_model(exported: Path, prepared: Path) -> onnx.ModelProto:
    """ONNX Runtime's quantization pre-processing of ``exported``, Convs named by module.

    Returns:
        The prepared model (also written to ``prepared``).
    """
    model = onnx.load(str(exported))
    name_convs_after_modules(model)
    named = prepared.with_name(prepared.stem + ".named.onnx")
    onnx.save(model, str(named))
    with quiet_onnxruntime_tools():
        # Its symbolic shape inference fails on the Range ops of the shape-generic pooling;
        # ONNX shape inference and the graph optimizations run.
        quant_pre_process(str(named), str(prepared), skip_symbolic_shape=True)
    named.unlink()
    # With the shape-inference mark the quantizer looks for, so that it does not redo it
    # for every copy it quantizes.
    model = save_and_reload_model_with_shape_infer(onnx.load(str(prepared)))
    onnx.save(model, str(prepared))
    return model


class _Images(CalibrationDataReader):
    """ONNX Runtime's calibration reader over a list of input arrays."""

    def __init__(self, input_name: str, images: Sequence[np.ndarray]) -> None:
        self.input_name = input_name
        self.images = iter(images)

    def get_next(self) -> dict | None:
        image = next(self.images, None)
        return None if image is None else {self.input_name: image}


def collect_ranges(
    model_path: Path,
    images: Sequence[np.ndarray],
    method: str,
    workdir: Path,
    progress: Progress | None = None,
) -> TensorsData:
    """Calibration: the range of every activation over ``images``, by ``method``.

    Args:
        model_path: The prepared float model.
        images: Normalized ``1,3,H,W`` float32 images.
        method: A key of :data:`CALIBRATION_METHODS`.
        workdir: Where the calibrator writes its augmented model.
        progress: Called once per image.
    """
    if method not in CALIBRATION_METHODS:
        raise UsageError(
            f"--calib-method {method!r} is not known; pass one of "
            f"{', '.join(CALIBRATION_METHODS)}."
        )
    if not images:
        raise UsageError("The calibration set is empty: --calib-images must be at least 1.")
    input_name = onnx.load(str(model_path), load_external_data=False).graph.input[0].name
    with quiet_onnxruntime_tools():
        calibrator = create_calibrator(
            model_path,
            augmented_model_path=str(workdir / "augmented.onnx"),
            calibrate_method=CALIBRATION_METHODS[method],
            extra_options={"symmetric": False},
        )
        for image in images:
            calibrator.collect_data(_Images(input_name, [image]))
            if progress is not None:
                progress()
        ranges = calibrator.compute_data()
    return ranges


def quantize_model(
    model: onnx.ModelProto,
    ranges: TensorsData,
    per_channel: bool,
    nodes_to_quantize: Sequence[str] = (),
    nodes_to_exclude: Sequence[str] = (),
) -> onnx.ModelProto:
    """The QDQ INT8 (S8S8) model of a prepared float model; ``model`` is left unchanged.

    Args:
        ranges: From :func:`collect_ranges` on the same model.
        per_channel: One weight scale per output channel (else one per tensor).
        nodes_to_quantize: Only these nodes (empty: every node ONNX Runtime can quantize).
        nodes_to_exclude: Nodes left in float32.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    with quiet_onnxruntime_tools():
        quantizer = QDQQuantizer(
            copy,
            per_channel,
            False,  # reduce_range: for U8 on CPUs without VNNI; S8S8 does not need it
            WEIGHT_TYPE,
            ACTIVATION_TYPE,
            ranges,
            list(nodes_to_quantize),
            [*nodes_to_exclude, *size_computations(model)],
            QUANTIZED_OP_TYPES,
            {},
        )
        quantizer.quantize_model()
    return quantizer.model.model


def size_computations(model: onnx.ModelProto) -> list[str]:
    """The nodes whose values follow from the input's size, not from its values.

    The export's shape-generic pooling and resizing (:mod:`repvgg_seg.deploy.onnx_export`)
    build their matrices from the image's height and width. A calibrated range holds for
    activations at any size; it does not hold for a value computed from the size (a source
    coordinate up to the width, a weight of 1 / pixels): rounded to the calibration
    images' range, such values are wrong at every other size. These nodes stay float.
    """
    constants = {initializer.name for initializer in model.graph.initializer}
    by_values = {graph_input.name for graph_input in model.graph.input} - constants
    names = []
    for node in model.graph.node:  # ONNX graphs list their nodes in topological order
        if node.op_type not in ("Shape", "Size") and by_values.intersection(node.input):
            by_values.update(node.output)
        else:
            names.append(node.name)
    return names


ACTIVATION_FORMATS = ("auto", "int8", "uint8")
"""``--activations``: how the written model stores its activations (``auto``: by the host)."""
UINT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
"""CPU flags of int8 dot products without saturation (VNNI, AMX), where ``auto`` means
``uint8``: their instructions multiply unsigned by signed bytes, and ONNX Runtime's fast x86
kernels (VNNI convs, the AMX GEMM) take U8S8; without them (AVX2's ``vpmaddubsw`` saturates
16-bit sums of U8S8 products) ONNX Runtime recommends S8S8."""


def activation_format(requested: str, cpu_flags: Sequence[str]) -> str:
    """``int8`` or ``uint8``: ``requested``, or for ``auto`` the one the host runs fast."""
    if requested not in ACTIVATION_FORMATS:
        raise UsageError(
            f"--activations {requested!r} is not known; pass one of "
            f"{', '.join(ACTIVATION_FORMATS)}."
        )
    if requested != "auto":
        return requested
    return "uint8" if set(UINT8_FLAGS) & set(cpu_flags) else "int8"


def with_uint8_activations(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same QDQ model with unsigned 8-bit activations; ``model`` is left unchanged.

    Every activation zero point ``z`` (int8) becomes ``z + 128`` (uint8): each quantized value
    moves by 128 and each dequantized one stays bit for bit what it was (ONNX Runtime's U8S8
    kernels may still round a few sums unlike its S8S8 ones). Weights stay signed. ONNX
    Runtime then runs U8S8 kernels: on this project's AMX Xeon in about half the S8S8
    model's time (docs/benchmarks.md).
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    initializers = {tensor.name: tensor for tensor in copy.graph.initializer}
    # Activations pass through QuantizeLinear; weights and biases are stored quantized and
    # only dequantized, so the zero points that QuantizeLinear nodes take are activations'.
    zero_points = {
        node.input[2]
        for node in copy.graph.node
        if node.op_type == "QuantizeLinear" and len(node.input) > 2
    }
    for name in zero_points:
        values = onnx.numpy_helper.to_array(initializers[name])
        if values.dtype == np.int8:
            shifted = (values.astype(np.int16) + 128).astype(np.uint8)
            initializers[name].CopyFrom(onnx.numpy_helper.from_array(shifted, name))
    return copy


def save_model(model: onnx.ModelProto, file) -> None:
    """Writes ``model`` as one protobuf to an open binary file."""
    file.write(model.SerializeToString())
