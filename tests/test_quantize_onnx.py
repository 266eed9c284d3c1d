"""INT8 ONNX models (repvgg_seg.quantize.onnx_quant): the activations' storage, the
calibration methods offered. Small graphs built here; no segmentor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from helpers import load_tool

pytest.importorskip("onnxruntime")


def _model(nodes, weights, image_shape, output_shape=None) -> onnx.ModelProto:
    """A float ONNX model of ``nodes`` from ``image`` to ``logits`` (opset 17)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, image_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, output_shape)],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _conv_relu_conv(path: Path) -> None:
    """A float ONNX model: 3x3 conv, ReLU, 1x1 conv (seeded weights)."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        for name, shape in (("w1", (8, 3, 3, 3)), ("b1", (8,)), ("w2", (4, 8, 1, 1)))
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["logits"]),
    ]
    onnx.save(_model(nodes, weights, [1, 3, 16, 16], [1, 4, 16, 16]), str(path))


def test_uint8_activations_are_the_same_numbers(tmp_path):
    from repvgg_seg.onnx_session import open_session
    from repvgg_seg.quantize import onnx_quant

    _conv_relu_conv(tmp_path / "float.onnx")
    prepared = onnx_quant.prepare_float_model(tmp_path / "float.onnx", tmp_path / "prep.onnx")
    rng = np.random.default_rng(1)
    images = [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(3)]
    ranges = onnx_quant.collect_ranges(tmp_path / "prep.onnx", images, "minmax", tmp_path)
    signed = onnx_quant.quantize_model(prepared, ranges, per_channel=True)
    unsigned = onnx_quant.with_uint8_activations(signed)

    def zero_point_types(model, op_type):
        constants = {t.name: t.data_type for t in model.graph.initializer}
        return {constants[n.input[2]] for n in model.graph.node if n.op_type == op_type}

    int8, uint8 = onnx.TensorProto.INT8, onnx.TensorProto.UINT8
    assert zero_point_types(signed, "QuantizeLinear") == {int8}
    assert zero_point_types(unsigned, "QuantizeLinear") == {uint8}
    # Weights stay signed (their DequantizeLinear nodes take int8 zero points).
    assert int8 in zero_point_types(unsigned, "DequantizeLinear")
    outputs = [
        open_session(model.SerializeToString()).run(None, {"image": images[0]})[0]
        for model in (signed, unsigned)
    ]
    np.testing.assert_array_equal(outputs[0], outputs[1])  # bit for bit
    assert not np.array_equal(
        outputs[0], open_session(tmp_path / "prep.onnx").run(None, {"image": images[0]})[0]
    )


def test_matmuls_stay_float(tmp_path):
    """A segmentor graph's MatMuls are the export's pooling and resizing: their averaging
    weights (1/8192 beside 1/231) are not rounded to 8 bits; the convs are quantized."""
    from onnx import helper, numpy_helper

    from repvgg_seg.onnx_session import open_session
    from repvgg_seg.quantize import onnx_quant

    rng = np.random.default_rng(0)
    pooling = np.concatenate([np.full((1, 64), 1 / 64), np.eye(64)[:6] / 2]).astype(np.float32)
    weights = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "w"),
        numpy_helper.from_array(pooling, "pooling"),
        numpy_helper.from_array(np.array([1, 4, 64, 1], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["c"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["flat"]),
        helper.make_node("MatMul", ["pooling", "flat"], ["logits"]),
    ]
    onnx.save(_model(nodes, weights, [1, 3, 8, 8], [1, 4, 7, 1]), tmp_path / "f.onnx")
    prepared = onnx_quant.prepare_float_model(tmp_path / "f.onnx", tmp_path / "prep.onnx")
    images = [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(2)]
    ranges = onnx_quant.collect_ranges(tmp_path / "prep.onnx", images, "minmax", tmp_path)
    quantized = onnx_quant.quantize_model(prepared, ranges, per_channel=True)

    produced_by = {out: node.op_type for node in quantized.graph.node for out in node.output}
    [matmul] = [node for node in quantized.graph.node if node.op_type == "MatMul"]
    assert matmul.input[0] == "pooling"  # the matrix as it was, no DequantizeLinear
    [conv] = [node for node in quantized.graph.node if node.op_type == "Conv"]
    assert produced_by[conv.input[1]] == "DequantizeLinear"
    # It runs, and agrees with float within the activations' 8-bit steps.
    relu = open_session(tmp_path / "prep.onnx").run(None, {"image": images[0]})[0]
    int8 = open_session(quantized.SerializeToString()).run(None, {"image": images[0]})[0]
    assert int8.shape == relu.shape and np.abs(int8 - relu).max() < 0.05 * np.abs(relu).max()


def test_values_computed_from_the_input_size_stay_float():
    from onnx import TensorProto, helper, numpy_helper

    from repvgg_seg.quantize import onnx_quant

    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["c"], name="conv"),
        helper.make_node("Shape", ["c"], ["shape"], name="shape", start=3),
        helper.make_node("Cast", ["shape"], ["width"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Div", ["one", "width"], ["weight"], name="weight"),
        helper.make_node("Mul", ["c", "weight"], ["scaled"], name="scale"),
        helper.make_node("Relu", ["scaled"], ["logits"], name="relu"),
    ]
    model = _model(nodes, [one, w], [1, 3, "h", "w"])
    assert onnx_quant.size_computations(model) == ["shape", "cast", "weight"]


@pytest.mark.parametrize(
    "flags, expected",
    [(["avx2", "fma"], "int8"), (["avx2", "avx512_vnni"], "uint8"), (["amx_int8"], "uint8")],
)
def test_auto_activations_follow_the_cpu(flags, expected):
    from repvgg_seg.quantize.onnx_quant import activation_format

    assert activation_format("auto", flags) == expected
    assert activation_format("int8", ["amx_int8"]) == "int8"


def test_entropy_calibration_is_not_offered():
    # ONNX Runtime's entropy thresholds lost 1.2-1.9 mIoU on the demo model (docs/quantization.md).
    from repvgg_seg.errors import UsageError
    from repvgg_seg.quantize import QuantizeOptions

    with pytest.raises(UsageError, match="'entropy' is not known; pass one of minmax, percentile"):
        QuantizeOptions(calib_method="entropy")
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        load_tool("quantize").parse_args(["c.py", "m.pth", "out", "--calib-method", "entropy"])
