"""ONNX models as segmentors (repvgg_seg/onnx_segmentor.py) and the one ONNX Runtime session
owner (repvgg_seg/onnx_session.py): what a model file may make the tools read, and that every
session of the package is built there."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import one_error_line, tool_exit

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

from repvgg_seg.onnx_session import (  # noqa: E402  (after the importorskip)
    OnnxModelError,
    open_session,
    session_options,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "repvgg_seg"
SYNTHETIC_CONFIG = ROOT / "configs" / "pspnet_repvgg_a0_synthetic.py"
CLASSES = 19  # the synthetic config's (Cityscapes') classes


def conv_model(external_location: str | None = None, classes: int = CLASSES) -> onnx.ModelProto:
    """A segmentor-shaped ONNX model: ``N,3,H,W`` -> 1x1 conv -> ``N,classes,H,W``.

    With ``external_location``, its weight says its bytes are in that file (ONNX's external
    data), as a hostile model would.
    """
    weight = np.random.default_rng(0).standard_normal((classes, 3, 1, 1)).astype(np.float32)
    tensor = onnx.numpy_helper.from_array(weight, "weight")
    if external_location is not None:
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", external_location), ("offset", "0")):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        entry = tensor.external_data.add()
        entry.key, entry.value = "length", str(weight.nbytes)
    dims = ["N", 3, "H", "W"]
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["image", "weight"], ["logits"])],
        "conv",
        [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, dims)],
        [
            onnx.helper.make_tensor_value_info(
                "logits", onnx.TensorProto.FLOAT, ["N", classes, "H", "W"]
            )
        ],
        [tensor],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model


def hostile_model(folder: Path, kind: str) -> Path:
    """``folder/models/model.onnx`` whose weight lives at an escaping or absolute path that
    ONNX Runtime would read (the secret holds exactly the weight's bytes)."""
    secret = folder / "secret" / "key.bin"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_bytes(np.ones((CLASSES, 3, 1, 1), np.float32).tobytes())
    location = {
        "escaping": "../secret/key.bin",
        "absolute": str(secret),
        "etc_passwd": "../../../../../../../../etc/passwd",
        "inside": "weights.bin",
    }[kind]
    models = folder / "models"
    models.mkdir(exist_ok=True)
    (models / "weights.bin").write_bytes(secret.read_bytes())
    path = models / "model.onnx"
    path.write_bytes(conv_model(location).SerializeToString())
    return path


@pytest.mark.parametrize("kind", ["escaping", "absolute", "etc_passwd", "inside"])
def test_external_data_is_refused_before_onnx_runtime_reads_it(tmp_path, kind, monkeypatch):
    path = hostile_model(tmp_path, kind)
    opened = []
    real = onnxruntime.InferenceSession
    monkeypatch.setattr(
        onnxruntime, "InferenceSession", lambda *a, **k: opened.append(a) or real(*a, **k)
    )
    with pytest.raises(OnnxModelError, match="keeps tensor 'weight' in an external file") as error:
        open_session(path)
    assert str(path) in str(error.value)
    assert opened == []  # ONNX Runtime never saw the model


def test_a_self_contained_model_runs(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(conv_model().SerializeToString())
    session = open_session(path, num_threads=1)
    (logits,) = session.run(None, {"image": np.ones((1, 3, 4, 5), np.float32)})
    assert logits.shape == (1, CLASSES, 4, 5)


@pytest.mark.parametrize("kind", ["escaping", "absolute", "etc_passwd"])
def test_test_and_infer_refuse_external_data_in_one_line(tmp_path, kind, capsys):
    path = hostile_model(tmp_path, kind)
    status, err = tool_exit(
        "test", [str(SYNTHETIC_CONFIG), str(path), "--work-dir", str(tmp_path / "w")], capsys
    )
    assert status == 2 and "in an external file" in one_error_line(err, "test")
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    argv = [str(SYNTHETIC_CONFIG), str(path), str(image), "--out-dir", str(tmp_path / "out")]
    status, err = tool_exit("infer", argv, capsys)
    assert status == 2 and "in an external file" in one_error_line(err, "infer")
    assert not (tmp_path / "out" / "overlays").exists()


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_weights_are_refused_naming_the_file(tmp_path, value, capsys):
    model = conv_model()
    weight = onnx.numpy_helper.to_array(model.graph.initializer[0]).copy()
    weight[3, 1] = value
    model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(weight, "weight"))
    path = tmp_path / "diverged.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(OnnxModelError, match="holds NaN or infinite weights in 1 of 1") as error:
        open_session(path)
    assert str(path) in str(error.value) and "'weight'" in str(error.value)
    argv = [str(SYNTHETIC_CONFIG), str(path), "--work-dir", str(tmp_path / "w")]
    status, err = tool_exit("test", argv, capsys)
    assert status == 2 and "NaN or infinite weights" in one_error_line(err, "test")


def test_fuse_on_an_onnx_model_is_refused(tmp_path, capsys):
    path = tmp_path / "model.onnx"
    path.write_bytes(conv_model().SerializeToString())
    argv = [str(SYNTHETIC_CONFIG), str(path), "--fuse", "--work-dir", str(tmp_path / "w")]
    status, err = tool_exit("test", argv, capsys)
    assert status == 2 and "already fused" in one_error_line(err, "test")


def test_onnx_runtime_logs_as_the_process_wide_logger_says(capfd):
    """Sessions follow ONNX Runtime's default logger, which the tools' quiet mode sets to
    fatal: its red ``[E:onnxruntime:...]`` line of a failed run is then not shown (it said
    the same thing before the tool's one line), and with ``--verbose`` it is."""
    model = conv_model()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "C"  # any channel count
    four_channels = {"image": np.ones((1, 4, 2, 2), np.float32)}  # the conv takes 3
    try:
        for severity, shown in ((4, False), (2, True)):
            onnxruntime.set_default_logger_severity(severity)
            with pytest.raises(Exception, match="Conv"):
                open_session(model.SerializeToString()).run(None, four_channels)
            assert ("[E:onnxruntime:" in capfd.readouterr().err) == shown
    finally:
        onnxruntime.set_default_logger_severity(2)  # ONNX Runtime's default


def test_a_model_onnx_runtime_cannot_load_is_one_error(tmp_path):
    model = conv_model()
    model.graph.node[0].op_type = "NoSuchOp"
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(OnnxModelError, match=f"'{path}' is not an ONNX model ONNX Runtime"):
        open_session(path)


def test_session_options_are_decided_once():
    options = session_options(3)
    assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_every_onnx_runtime_session_is_built_by_the_one_owner():
    """Only onnx_session.py constructs ``InferenceSession`` or ``SessionOptions`` (deploy's
    ONNX check, the benchmark's runtimes and the ONNX segmentor built their own before)."""
    builders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            name = getattr(node, "attr", getattr(node, "id", None))
            if name in ("InferenceSession", "SessionOptions"):
                builders.append(str(path.relative_to(ROOT)))
    assert set(builders) == {"repvgg_seg/onnx_session.py"}, builders
