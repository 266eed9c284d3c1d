"""repvgg_seg.cli: the tools' shared conventions."""

from __future__ import annotations

import argparse
import io
import os
import re
import signal
import sys
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.utils import ProgressBar

from repvgg_seg.checkpoint import CheckpointError
from repvgg_seg.cli import (
    BUG_ADVICE,
    EXIT_BUG,
    KINETO_LOG_LEVEL,
    CheckFailedError,
    DictAction,
    UsageError,
    load_config,
    one_line,
    quiet_third_party,
    run_tool,
    set_work_dir,
    take_verbose_flag,
)
from repvgg_seg.datasets import CityscapesDataError

from helpers import load_tool, one_error_line, run_script, tool_exit

ROOT = Path(__file__).resolve().parents[1]


def test_same_named_configs_of_the_two_families_get_distinct_work_dirs(tmp_path):
    work_dirs = {}
    for config in (ROOT / "configs" / "pspnet_r50.py", ROOT / "configs/mmseg_style/pspnet_r50.py"):
        cfg = Config()
        set_work_dir(cfg, config, None)
        work_dirs[config.parent.name] = cfg.work_dir
    assert work_dirs == {
        "configs": "work_dirs/pspnet_r50",
        "mmseg_style": "work_dirs/mmseg_style/pspnet_r50",
    }
    # Outside a configs/ folder: the config's name, as mmseg does.
    cfg = Config()
    set_work_dir(cfg, tmp_path / "mine.py", None)
    assert cfg.work_dir == "work_dirs/mine"
    # --work-dir, then the config's own work_dir, win over the default.
    cfg = Config(dict(work_dir="runs/a"))
    set_work_dir(cfg, ROOT / "configs/mmseg_style/pspnet_r50.py", None)
    assert cfg.work_dir == "runs/a"
    set_work_dir(cfg, ROOT / "configs/mmseg_style/pspnet_r50.py", "runs/b")
    assert cfg.work_dir == "runs/b"


# How a run ends (run_tool): refusals are one line, anything else is a bug with its traceback.


def end_of(main, capsys, argv: list[str] | None = None) -> tuple[int, str]:
    """``run_tool(main)`` as ``tools/x.py``: (exit status, stderr)."""
    capsys.readouterr()
    argv0 = mock.patch.object(sys, "argv", ["tools/x.py", *(argv or [])])
    with argv0, pytest.raises(SystemExit) as ended:
        run_tool(main)
    return ended.value.code, capsys.readouterr().err


def raising(error: BaseException):
    def main() -> None:
        raise error

    return main


@pytest.mark.parametrize(
    "error, status, message",
    [
        (UsageError("--calib-images must be at least 1, got 0."), 2, "--calib-images must"),
        (CheckFailedError("fused logits differ"), 1, "fused logits differ"),
        (FileNotFoundError(2, "No such file or directory", "a.pth"), 2, "a.pth: No such file"),
        (PermissionError(13, "Permission denied", "/out"), 2, "/out: Permission denied"),
        (OSError(30, "Read-only file system", "/mnt/a.pth"), 2, "/mnt/a.pth: Read-only file"),
        (CheckpointError("'a.pth' is truncated"), 2, "'a.pth' is truncated"),
        (ConnectionError("the download of URL stopped"), 1, "the download of URL stopped"),
    ],
)
def test_refusals_are_one_line(error, status, message, capsys):
    code, err = end_of(raising(error), capsys)
    assert code == status
    assert one_error_line(err, "x").startswith(message)
    # --verbose: the same line, after the refusal's traceback.
    code, err = end_of(raising(error), capsys, ["--verbose"])
    assert code == status and "Traceback" in err and err.endswith(f"error: {one_line(error)}\n")


@pytest.mark.parametrize(
    "error", [ValueError("an internal invariant"), PermissionError("no path"), KeyError("k")]
)
def test_other_exceptions_are_bugs_with_their_traceback(error, capsys):
    code, err = end_of(raising(error), capsys)
    assert code == EXIT_BUG == 3
    lines = err.splitlines()
    assert lines[0] == "Traceback (most recent call last):" and "in main" in err
    assert lines[-1].startswith(
        f"tools/x.py: error: this is a bug in repvgg_seg ({type(error).__name__}"
    )
    assert lines[-1].endswith(f"{BUG_ADVICE}.")


def test_an_internal_value_error_in_a_real_tool_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    tool = load_tool("convert_checkpoint")

    def convert_with_a_defect(*args, **kwargs):
        return np.zeros(3).reshape(2, 2)  # numpy's ValueError, as from a real defect

    monkeypatch.setattr(tool, "convert_checkpoint_file", convert_with_a_defect)
    (tmp_path / "a.pth").write_bytes(b"")
    code, err = end_of(
        lambda: tool.main([str(tmp_path / "a.pth"), str(tmp_path / "b.pth")]), capsys
    )
    assert code == EXIT_BUG
    assert "in convert_with_a_defect" in err and "cannot reshape array of size 3" in err
    assert err.splitlines()[-1].startswith(
        "tools/x.py: error: this is a bug in repvgg_seg (ValueError"
    )


def test_interrupt_line_starts_a_line_after_an_unfinished_progress_bar(monkeypatch, capsys):
    console = io.StringIO()  # stdout and stderr on one terminal
    monkeypatch.setattr(sys, "stdout", console)
    monkeypatch.setattr(sys, "stderr", console)
    held_before_the_run = sys.stdout

    def main() -> None:
        # mmengine's: "\r[>>   ] 1/4, ..." and no newline until done. Its default stream is
        # the sys.stdout of when it was imported: here, the one held before the run.
        bar = ProgressBar(4, file=held_before_the_run)
        bar.update()
        raise KeyboardInterrupt

    with mock.patch.object(sys, "argv", ["tools/x.py"]), pytest.raises(SystemExit) as ended:
        run_tool(main)
    assert ended.value.code == 130
    text = console.getvalue()
    line = "interrupted (Ctrl-C)"
    assert "1/4" in text and text.endswith(f"\ntools/x.py: error: {line}\n")
    assert not text.endswith(f"\n\ntools/x.py: error: {line}\n")
    assert "write" not in vars(console)  # the watch is undone


# A real SIGTERM, in a process of its own: the signal goes to the whole process, and the test
# process should not depend on what earlier tests left in it (signal handlers, threads).
SIGTERM_AFTER_A_BAR = """
import os, signal, sys
from mmengine.utils import ProgressBar
from repvgg_seg.cli import run_tool

def main():
    ProgressBar(4).update()
    os.kill(os.getpid(), signal.SIGTERM)

sys.argv = ["tools/x.py"]
run_tool(main)
"""


def test_sigterm_line_starts_a_line_after_an_unfinished_progress_bar():
    ended = run_script(SIGTERM_AFTER_A_BAR, timeout=300, merge_stderr=True)
    text = ended.stdout
    assert ended.returncode == 128 + signal.SIGTERM, text
    assert "1/4" in text and text.endswith("\ntools/x.py: error: terminated (SIGTERM)\n"), text
    assert not text.endswith("\n\ntools/x.py: error: terminated (SIGTERM)\n"), text


def test_a_finished_line_gets_no_empty_line(monkeypatch):
    console = io.StringIO()
    monkeypatch.setattr(sys, "stdout", console)
    monkeypatch.setattr(sys, "stderr", console)

    def main() -> None:
        print("done.")
        raise KeyboardInterrupt

    with mock.patch.object(sys, "argv", ["tools/x.py"]), pytest.raises(SystemExit):
        run_tool(main)
    assert console.getvalue() == "done.\ntools/x.py: error: interrupted (Ctrl-C)\n"


# Case 16 of issue 25: --cfg-options with mmseg's dict(...) values.

INIT_CFG = "model.backbone.init_cfg=dict(type='Pretrained',checkpoint='x.pth')"


def test_cfg_options_take_dict_values_as_mmseg_configs_write_them():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    options = parser.parse_args(
        ["--cfg-options", INIT_CFG, "a=dict(k=[1,(2,3)],path=work_dirs/x.pth)", "b=1,2", "c=[x,y]"]
    ).cfg_options
    assert options == {
        "model.backbone.init_cfg": {"type": "Pretrained", "checkpoint": "x.pth"},
        "a": {"k": [1, (2, 3)], "path": "work_dirs/x.pth"},
        "b": [1, 2],  # the rest as mmengine reads it
        "c": ["x", "y"],
    }
    cfg = load_config(ROOT / "configs/pspnet_repvgg_a0_synthetic.py", options)
    assert cfg.model.backbone.init_cfg == dict(type="Pretrained", checkpoint="x.pth")
    # Into a dict, a dict merges (mmengine's rule): the backbone keeps its other keys.
    merged = load_config(
        ROOT / "configs/pspnet_repvgg_a0_synthetic.py",
        parser.parse_args(["--cfg-options", "model.backbone=dict(arch=A1)"]).cfg_options,
    )
    assert merged.model.backbone.arch == "A1"
    assert merged.model.backbone.type == cfg.model.backbone.type
    assert merged.model.backbone.out_indices == cfg.model.backbone.out_indices
    # Values that mmengine's parser recurses on or asserts about are one line naming them.
    for value in ["a=x(1,2)", "a=[1,2", "a=dict(b=open('x'))", "a=dict(x=/abs.pth)", "a"]:
        with pytest.raises(UsageError, match=re.escape(f"--cfg-options {value!r}")):
            parser.parse_args(["--cfg-options", value])


def test_cfg_options_data_root_reaches_every_dataloader(tmp_path):
    config = ROOT / "configs/pspnet_repvgg_a0_synthetic.py"
    default = load_config(config)
    assert default.train_dataloader.dataset.data_root == default.data_root  # read the variable
    moved = load_config(config, {"data_root": str(tmp_path)})
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        assert moved[loader].dataset.data_root == str(tmp_path), loader
    # A dataset given its own root keeps it.
    own = load_config(
        config, {"data_root": str(tmp_path), "val_dataloader.dataset.data_root": "elsewhere"}
    )
    assert own.val_dataloader.dataset.data_root == "elsewhere"
    assert own.test_dataloader.dataset.data_root == str(tmp_path)


def tools_taking_cfg_options() -> list[str]:
    declares = re.compile(r'add_argument\(\s*"--cfg-options"')
    return sorted(p.stem for p in (ROOT / "tools").glob("*.py") if declares.search(p.read_text()))


def test_every_tool_taking_cfg_options_uses_the_cli_action():
    names = tools_taking_cfg_options()
    assert {"train", "test", "quantize"} <= set(names)
    for name in names:
        tool = load_tool(name)
        assert tool.DictAction is DictAction, f"tools/{name}.py: mmengine's DictAction"


@pytest.mark.parametrize("tool", ["train", "test", "quantize", "deploy"])
def test_dict_cfg_options_reach_the_config_in_every_tool(tool, tmp_path, capsys):
    # The options are parsed before the (missing) config is read: the run ends with the
    # config's one line, not mmengine's RecursionError.
    positional = {"train": 1, "test": 2, "quantize": 3, "deploy": 3}[tool]
    argv = [str(tmp_path / "missing.py"), str(tmp_path / "a.pth"), str(tmp_path / "out")]
    code, err = tool_exit(tool, [*argv[:positional], "--cfg-options", INIT_CFG], capsys)
    assert code == 2 and "missing.py' does not exist" in one_error_line(err, tool)


# Case 19 of issue 25: ONNX Runtime's own log lines.


def test_quiet_silences_onnx_runtime_log_and_restores_it(tmp_path, capfd):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    from onnx import helper

    weight = onnx.numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "conv",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [weight],
    )
    path = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)

    def run_too_small_an_image() -> str:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        with pytest.raises(Exception, match="Invalid input shape"):
            session.run(None, {"x": np.ones((1, 3, 1, 1), np.float32)})
        return capfd.readouterr().err

    with quiet_third_party():
        assert "onnxruntime" not in run_too_small_an_image()
    assert "[E:onnxruntime" in run_too_small_an_image()  # restored: --verbose shows it


def test_verbose_keeps_the_noise_and_quiet_restores_everything(monkeypatch):
    argv = ["tools/x.py", "a", "--verbose", "b"]
    assert take_verbose_flag(argv) and argv == ["tools/x.py", "a", "b"]
    monkeypatch.delenv("REPVGG_SEG_VERBOSE", raising=False)
    assert not take_verbose_flag(["tools/x.py"])
    monkeypatch.setenv("REPVGG_SEG_VERBOSE", "1")
    assert take_verbose_flag(["tools/x.py"])

    monkeypatch.delenv(KINETO_LOG_LEVEL[0], raising=False)
    call_handlers = MMLogger.callHandlers
    mmseg_warning = dict(category=UserWarning, filename="builder.py", lineno=36)
    message = "``build_loss`` would be deprecated soon"
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with quiet_third_party():
            warnings.warn_explicit(message, module="mmseg.models.builder", **mmseg_warning)
            warnings.warn_explicit("a warning of our own", module="repvgg_seg.x", **mmseg_warning)
            assert os.environ[KINETO_LOG_LEVEL[0]] == KINETO_LOG_LEVEL[1]
            assert MMLogger.callHandlers is not call_handlers
        warnings.warn_explicit(message, module="mmseg.models.builder", **mmseg_warning)
    assert [str(w.message) for w in shown] == ["a warning of our own", message]
    assert MMLogger.callHandlers is call_handlers and KINETO_LOG_LEVEL[0] not in os.environ


def test_error_from_a_dataloader_worker_is_one_line():
    from torch._utils import ExceptionWrapper

    try:
        raise CityscapesDataError("Label 'x.png' holds values outside: 50 (9 pixels).")
    except CityscapesDataError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(CityscapesDataError) as error:
        wrapped.reraise()  # what the main process gets: the worker's traceback in the text
    assert "Traceback" in str(error.value)
    message = one_line(error.value)
    assert message == "Label 'x.png' holds values outside: 50 (9 pixels)."
