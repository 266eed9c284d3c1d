"""The one checkpoint reader (repvgg_seg.checkpoint) and tools/test.py's strict loading."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import HistoryBuffer
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

import repvgg_seg  # noqa: F401  (registers the RepVGG backbone)
from repvgg_seg.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    is_deployed_state_dict,
    read_checkpoint,
    state_dict_of,
)
from repvgg_seg.datasets import make_synthetic_cityscapes
from repvgg_seg.models import RepVGG
from repvgg_seg.reparam import reparameterize_model

from helpers import load_tool

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "pspnet_repvgg_a0_synthetic.py"


class _GetattrTrick:
    """Pickles as ``getattr(HistoryBuffer, '__init__')``: not a statistics method."""

    def __reduce__(self):
        return getattr, (HistoryBuffer, "__init__")


# --------------------------------------------------------------------------- the reader


def test_legacy_non_zip_checkpoint_loads(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"state_dict": {"w": torch.arange(3.0)}}, path, _use_new_zipfile_serialization=False)
    torch.testing.assert_close(read_checkpoint(path)["state_dict"]["w"], torch.arange(3.0))


def test_mmengine_message_hub_loads_without_weights_only_off(tmp_path):
    buffer = HistoryBuffer()
    buffer.update(0.5)
    buffer.update(0.25)
    path = tmp_path / "iter_2.pth"
    torch.save({"message_hub": {"loss": buffer}, "meta": {"seed": np.int64(3)}}, path)
    loaded = read_checkpoint(path)
    assert loaded["message_hub"]["loss"].mean() == pytest.approx(0.375)
    assert loaded["meta"]["seed"] == 3


@pytest.mark.parametrize(
    "payload, refused",
    [
        ({"args": argparse.Namespace(lr=0.1)}, "argparse.Namespace"),
        ({"hook": _GetattrTrick()}, "Refusing getattr"),
    ],
)
def test_python_objects_are_refused_naming_the_file(tmp_path, payload, refused):
    path = tmp_path / "objects.pth"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=rf"'{path}' holds Python objects.*{refused}"):
        read_checkpoint(path)


@pytest.mark.parametrize("size", [0, 100])
def test_empty_or_truncated_file_is_one_line_naming_it(tmp_path, size):
    whole = tmp_path / "whole.pth"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, whole)
    path = tmp_path / "cut.pth"
    path.write_bytes(whole.read_bytes()[:size])
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert ("empty" if size == 0 else "truncated or corrupt") in message


class _RunsACommand:
    """Pickles as ``os.system(...)``: what a crafted checkpoint holds."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_a_checkpoint_that_runs_a_command_is_called_unsafe(tmp_path, legacy):
    # Issue 25 case 9: torch words a blocked module ("whose module posix is blocked")
    # differently; the legacy file was called truncated or corrupt.
    path = tmp_path / "crafted.pth"
    marker = tmp_path / "ran"
    payload = {"state_dict": {"w": torch.zeros(1)}, "hook": _RunsACommand(marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafeCheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert f"'{path}' is unsafe and was not loaded" in message and "posix.system" in message
    assert "corrupt" not in message and "\n" not in message and not marker.exists()


def _int8_onnx_model() -> bytes:
    """A valid ONNX model in the QDQ form of tools/quantize.py (int8 weights)."""
    weight = onnx.numpy_helper.from_array(np.arange(6, dtype=np.int8).reshape(2, 3, 1, 1), "w")
    scale = onnx.numpy_helper.from_array(np.array(0.1, dtype=np.float32), "s")
    zero = onnx.numpy_helper.from_array(np.array(0, dtype=np.int8), "z")
    nodes = [
        onnx.helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"]),
        onnx.helper.make_node("Conv", ["x", "wf"], ["y"]),
    ]
    graph = onnx.helper.make_graph(
        nodes,
        "int8",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2, 4, 4])],
        [weight, scale, zero],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_an_onnx_model_named_pth_is_recognised(tmp_path):
    # Issue 25 case 18: "may be truncated or corrupt. Delete it" about a good model.
    path = tmp_path / "model_int8.pth"
    path.write_bytes(_int8_onnx_model())
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert f"'{path}' is an ONNX model, not a PyTorch checkpoint" in message
    assert f"rename it to '{tmp_path / 'model_int8.onnx'}'" in message
    assert "Delete" not in message and "corrupt" not in message


def test_missing_file_is_both_checkpoint_error_and_file_not_found(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere.pth' does not exist") as info:
        read_checkpoint(tmp_path / "nowhere.pth")
    assert isinstance(info.value, FileNotFoundError)


def test_state_dict_of_takes_state_dict_model_or_bare_tensors():
    weights = {"w": torch.zeros(1)}
    assert state_dict_of({"state_dict": weights, "meta": {}}, "a") is weights
    assert state_dict_of({"model": weights, "model_ema": {}}, "b") is weights
    assert state_dict_of({**weights, "step": 3}, "c") == weights
    with pytest.raises(CheckpointError, match="'d' has no state dict: .*'step'"):
        state_dict_of({"step": 3}, "d")


def test_is_deployed_state_dict_reads_our_block_layout():
    fused = RepVGG("A0", deploy=True).state_dict()
    training = RepVGG("A0").state_dict()
    assert is_deployed_state_dict({f"backbone.{k}": v for k, v in fused.items()}) is True
    assert is_deployed_state_dict(training) is False
    assert is_deployed_state_dict(["decode_head.conv_seg.weight"]) is None
    with pytest.raises(CheckpointError, match="ckpt.pth mixes fused"):
        is_deployed_state_dict([*fused, *training], "ckpt.pth")


# --------------------------------------------------------------------------- tools/test.py


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_synthetic_cityscapes(tmp_path_factory.mktemp("data"), 1, 2, (64, 32), 0)


@pytest.fixture(scope="module")
def segmentor_state() -> dict[str, torch.Tensor]:
    init_default_scope("mmseg")
    model_cfg = Config.fromfile(str(CONFIG)).model
    model_cfg.backbone.init_cfg = None
    return MODELS.build(model_cfg).state_dict()


def run_test_tool(tmp_path, data_root, checkpoint, config=CONFIG):
    options = [f"test_dataloader.dataset.data_root={data_root}"]
    return load_tool("test").main(
        [str(config), str(checkpoint), "--work-dir", str(tmp_path / "w"), "--cfg-options"] + options
    )


def test_test_tool_scores_a_legacy_checkpoint(tmp_path, data_root, segmentor_state):
    path = tmp_path / "legacy.pth"
    torch.save({"state_dict": segmentor_state}, path, _use_new_zipfile_serialization=False)
    metrics = run_test_tool(tmp_path, data_root, path)
    assert 0 <= metrics["mIoU"] <= 100


def test_test_tool_refuses_another_variant(tmp_path, data_root, segmentor_state):
    state = {k: v for k, v in segmentor_state.items() if not k.startswith("backbone.")}
    state.update({f"backbone.{k}": v for k, v in RepVGG("A1").state_dict().items()})
    torch.save({"state_dict": state}, tmp_path / "a1.pth")
    with pytest.raises(
        CheckpointError, match=r"RepVGG-A1 weights.*RepVGG-A0.*arch='A1'.*synthetic"
    ):
        run_test_tool(tmp_path, data_root, tmp_path / "a1.pth")


def test_test_tool_refuses_missing_keys_naming_both_files(tmp_path, data_root, segmentor_state):
    state = dict(segmentor_state)
    del state["decode_head.conv_seg.bias"]
    torch.save({"state_dict": state}, tmp_path / "cut.pth")
    with pytest.raises(
        CheckpointError, match=r"cut.pth' does not fit .*synthetic.py'.*missing \(1\): decode_head"
    ):
        run_test_tool(tmp_path, data_root, tmp_path / "cut.pth")


def test_test_tool_refuses_a_deployed_segmentor_with_the_training_config(
    tmp_path, data_root, segmentor_state
):
    init_default_scope("mmseg")
    model_cfg = Config.fromfile(str(CONFIG)).model
    model_cfg.backbone.init_cfg = None
    model = MODELS.build(model_cfg).eval()
    model.load_state_dict(segmentor_state)
    state = reparameterize_model(model).state_dict()
    # tools/deploy.py also folds the heads' BNs and drops the auxiliary head.
    state = {k: v for k, v in state.items() if ".bn." not in k or k.startswith("backbone.")}
    torch.save({"state_dict": state}, tmp_path / "deployed.pth")
    with pytest.raises(CheckpointError, match=r"missing .*decode_head.*_deploy\.py config"):
        run_test_tool(tmp_path, data_root, tmp_path / "deployed.pth")


def test_test_tool_refuses_a_training_checkpoint_with_a_deploy_config(
    tmp_path, data_root, segmentor_state
):
    config = tmp_path / "deploy_cfg.py"
    config.write_text(f"_base_ = [{str(CONFIG)!r}]\nmodel = dict(backbone=dict(deploy=True))\n")
    torch.save({"state_dict": segmentor_state}, tmp_path / "train.pth")
    with pytest.raises(CheckpointError, match=r"train.pth' holds training-time .*deploy_cfg.py"):
        run_test_tool(tmp_path, data_root, tmp_path / "train.pth", config)


@pytest.mark.parametrize("size", [0, 64])
def test_test_tool_names_an_empty_or_truncated_checkpoint(tmp_path, data_root, size):
    whole = tmp_path / "whole.pth"
    torch.save({"state_dict": {"w": torch.zeros(100)}}, whole)
    (tmp_path / "bad.pth").write_bytes(whole.read_bytes()[:size])
    with pytest.raises(CheckpointError) as info:
        run_test_tool(tmp_path, data_root, tmp_path / "bad.pth")
    message = str(info.value)
    assert message.startswith("Checkpoint") and "bad.pth" in message
    assert "\n" not in message


# --------------------------------------------------------------------------- the ONNX writer


def test_failed_onnx_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    from repvgg_seg.deploy import export_onnx

    class FailingProgram:
        @property
        def model_proto(self):
            raise OSError("No space left on device")

    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: FailingProgram())
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous export")
    with pytest.raises(OSError, match="No space left"):
        export_onnx(torch.nn.Conv2d(3, 2, 1), path, torch.randn(1, 3, 8, 8))
    assert path.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_reading_a_checkpoint_keeps_mmengine_types_allowed(tmp_path):
    # mmengine's --resume loads with plain torch.load: the process-wide allow-list must
    # survive a read_checkpoint call (a safe_globals context removed it on exit).
    path = tmp_path / "hub.pth"
    torch.save({"message_hub": HistoryBuffer([1.0, 2.0], [1, 1])}, path)
    read_checkpoint(path)
    assert torch.load(path, weights_only=True)["message_hub"].current() == 2.0


def test_corrupt_zip_and_symlink_loop_are_named_as_such(tmp_path):
    path = tmp_path / "corrupt.pth"
    torch.save({"state_dict": {"w": torch.zeros(100)}}, path)
    data = bytearray(path.read_bytes())
    pickle_start = data.index(b"\x80\x02")  # data.pkl's PROTO opcode, the zip's first entry
    data[pickle_start + 2 : pickle_start + 12] = b"A" * 10
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path)
    assert not isinstance(error.value, UnsafeCheckpointError)
    assert "is not a readable PyTorch checkpoint" in str(error.value)
    assert "not loaded for safety" not in str(error.value)

    (tmp_path / "a.pth").symlink_to(tmp_path / "b.pth")
    (tmp_path / "b.pth").symlink_to(tmp_path / "a.pth")
    with pytest.raises(CheckpointError, match="is a loop of symbolic links"):
        read_checkpoint(tmp_path / "a.pth")
    (tmp_path / "dangling.pth").symlink_to(tmp_path / "gone.pth")
    with pytest.raises(FileNotFoundError, match="is a symbolic link to .*gone.pth'"):
        read_checkpoint(tmp_path / "dangling.pth")
