"""Quiet by default: a normal CPU run of each tool prints no third-party noise.

Every tool (but the data preparation scripts) runs once, in this process as its
``__main__`` does (``run_tool``), on a tiny synthetic config. What it prints (stdout and
stderr at the file-descriptor level), the warnings a normal run would show and the WARNING
records of any logger are searched for ``ERROR``, ``Warning``, ``USDT``, ``profiler`` and
traceback lines. Import-time output is checked once in a subprocess.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from test_curves import tiny_image_folder

from repvgg_seg.cli import run_tool
from repvgg_seg.datasets import make_synthetic_cityscapes

from helpers import load_tool, tiny_config

ROOT = Path(__file__).resolve().parents[1]
# ERROR in capitals only: torch's build settings in mmengine's report hold "-Wno-error=...".
NOISE = re.compile(r"\bERROR\b|(?i:warning)|\bUSDT\b|(?i:profiler)|Traceback")
# What a plain `python tools/x.py` shows: Python's default filters hide these categories.
HIDDEN_BY_DEFAULT = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def noise_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if NOISE.search(line)]


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    """The synthetic config on 2 + 1 tiny images, trained for 2 iterations."""
    root = tmp_path_factory.mktemp("quiet")
    data_root = make_synthetic_cityscapes(root / "data", 2, 1, (128, 64), 0)
    return tiny_config(
        root / "tiny.py",
        data_root,
        train_cfg={"val_interval": 2},
        log_level="INFO",  # train's iteration lines are part of what is checked
        # mmengine keeps one Visualizer per name per process, logging into the save dir of
        # the first Runner that made it: a fresh name makes train log into its own work dir.
        visualizer={"name": root.name},
    )


def run_quietly(name: str, argv: list[str], capfd, caplog) -> str:
    """Runs ``tools/<name>.py argv`` through ``run_tool``; returns everything a user would
    see: printed output, shown warnings and WARNING+ log records. Fails on a non-zero exit."""
    tool = load_tool(name)
    capfd.readouterr()
    caplog.clear()
    argv0, sys.argv = sys.argv, [f"tools/{name}.py", *argv]
    try:
        with warnings.catch_warnings(record=True) as shown, caplog.at_level(logging.WARNING):
            warnings.simplefilter("always")
            for category in HIDDEN_BY_DEFAULT:
                warnings.simplefilter("ignore", category)
            # Only in-process: an earlier tool run made this config's Visualizer already.
            warnings.filterwarnings("ignore", r".*instance named of .* has been created")
            with pytest.raises(SystemExit) as ended:
                run_tool(tool.main)
    finally:
        sys.argv = argv0
    out, err = capfd.readouterr()
    text = out + err
    text += "".join(
        warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in shown
    )
    text += "".join(f"{r.levelname} {r.name}: {r.getMessage()}\n" for r in caplog.records)
    assert ended.value.code == 0, text[-3000:]
    return text


pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAINED: dict = {}  # tools/train.py's run, shared by the tests that need its checkpoint


@pytest.fixture
def trained(config, tmp_path_factory, capfd, caplog) -> dict:
    """tools/train.py's own run (once per module): work dir, checkpoint, what it printed."""
    if not TRAINED:
        work_dir = tmp_path_factory.mktemp("train")
        text = run_quietly("train", [str(config), "--work-dir", str(work_dir)], capfd, caplog)
        TRAINED.update(work_dir=work_dir, checkpoint=work_dir / "iter_2.pth", output=text)
    return TRAINED


def test_train_is_quiet(trained):
    assert "Iter(train) [2/2]" in trained["output"] and trained["checkpoint"].is_file()
    assert noise_lines(trained["output"]) == []


def test_test_with_fuse_is_quiet(config, trained, tmp_path, capfd, caplog):
    argv = [str(config), str(trained["checkpoint"]), "--fuse", "--work-dir", str(tmp_path)]
    text = run_quietly("test", argv, capfd, caplog)
    assert "mIoU" in text
    assert noise_lines(text) == []


def test_deploy_and_infer_are_quiet(config, trained, tmp_path, capfd, caplog):
    out_dir = tmp_path / "deploy"
    text = run_quietly(
        "deploy", [str(config), str(trained["checkpoint"]), str(out_dir)], capfd, caplog
    )
    assert noise_lines(text) == []
    images = config.parent / "data" / "leftImg8bit" / "val"
    argv = [str(out_dir / "tiny_deploy.py"), str(out_dir / "tiny_deploy.pth"), str(images)]
    text = run_quietly("infer", [*argv, "--out-dir", str(tmp_path / "infer")], capfd, caplog)
    assert "segmented 1 image" in text
    assert noise_lines(text) == []


def test_convert_checkpoint_is_quiet(trained, tmp_path, capfd, caplog):
    argv = [str(trained["checkpoint"]), str(tmp_path / "backbone.pth")]
    assert noise_lines(run_quietly("convert_checkpoint", argv, capfd, caplog)) == []


def test_benchmark_and_profile_kernels_are_quiet_on_cpu(config, capfd, caplog):
    argv = [str(config), "--size", "32", "32", "--rounds", "1", "--warmup", "0"]
    text = run_quietly(
        "benchmark", [*argv, "--variants", "deploy", "--peak-size", "64"], capfd, caplog
    )
    assert "(deploy)" in text
    assert noise_lines(text) == []
    argv = [str(config), "--size", "32", "32", "--passes", "1", "--top", "1"]
    text = run_quietly("profile_kernels", argv, capfd, caplog)
    assert noise_lines(text) == []  # torch.profiler's Kineto: USDT and gpuGetDeviceCount lines


def test_quantize_is_quiet(config, trained, tmp_path, capfd, caplog):
    if not (ROOT / "tools" / "quantize.py").is_file():
        pytest.skip("no tools/quantize.py")
    argv = [str(config), str(trained["checkpoint"]), str(tmp_path / "int8")]
    options = ["--calib-images", "1", "--eval-images", "1", "--max-miou-drop", "100"]
    assert noise_lines(run_quietly("quantize", argv + options, capfd, caplog)) == []


def test_pretrain_imagenet_is_quiet(tmp_path, capfd, caplog):
    data = tiny_image_folder(tmp_path / "data")
    argv = ["--data-path", str(data), "--model", "A0", "--epochs", "1", "-b", "4", "-j", "0"]
    sizes = ["--train-crop-size", "32", "--val-resize-size", "36", "--val-crop-size", "32"]
    out = ["--device", "cpu", "--output-dir", str(tmp_path / "out")]
    text = run_quietly("pretrain_imagenet", argv + sizes + out, capfd, caplog)
    assert (tmp_path / "out" / "model_deploy.pth").is_file()
    assert noise_lines(text) == []


def test_plot_logs_is_quiet(trained, tmp_path, capfd, caplog):
    out = tmp_path / "curves.png"
    text = run_quietly("plot_logs", [str(trained["work_dir"]), "--out", str(out)], capfd, caplog)
    assert out.is_file() and noise_lines(text) == []


def test_imports_print_nothing(trained, tmp_path):
    # In a fresh process: what the tool's imports print, and the whole of a short run.
    done = subprocess.run(
        [
            sys.executable,
            "tools/convert_checkpoint.py",
            str(trained["checkpoint"]),
            str(tmp_path / "b.pth"),
        ],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert noise_lines(done.stdout + done.stderr) == []
