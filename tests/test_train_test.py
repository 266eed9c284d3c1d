"""tools/train.py, tools/test.py and tools/dist_train.sh on synthetic Cityscapes (CPU).

Every run is a real subprocess with the real command line: mmengine Runner, mmseg
PSPNet-RepVGG-A0, IoUMetric, checkpoints, resume and torchrun with gloo.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

from repvgg_seg.atomic_io import TEMPORARY_SUFFIX
from repvgg_seg.datasets import make_synthetic_cityscapes
from repvgg_seg.reparam import reparameterize_model
from repvgg_seg.runner import allow_mmengine_checkpoint_types

from helpers import load_tool, one_error_line, randomize_bn, tool_exit

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "pspnet_repvgg_a0_synthetic.py")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_synthetic_cityscapes(tmp_path_factory.mktemp("data"), 4, 3, (128, 64), 0)


def small(data_root: Path, *options: str) -> list[str]:
    """--cfg-options for a tiny, fast run of the synthetic config."""
    return [
        "--cfg-options",
        *(f"{name}_dataloader.dataset.data_root={data_root}" for name in ("train", "val", "test")),
        "train_dataloader.batch_size=2",
        "train_dataloader.num_workers=0",
        "train_dataloader.persistent_workers=False",
        "default_hooks.logger.interval=1",
        *options,
    ]


def run_tool(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, **kwargs
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def scalars(work_dir: Path) -> list[dict]:
    (path,) = work_dir.glob("*/vis_data/scalars.json")
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root) -> Path:
    """A 2-iteration training with validation at the end."""
    work_dir = tmp_path_factory.mktemp("train")
    run_tool(
        ["tools/train.py", CONFIG, "--work-dir", str(work_dir)]
        + small(
            data_root,
            "train_cfg.max_iters=2",
            "train_cfg.val_interval=2",
            "default_hooks.checkpoint.interval=2",
            "param_scheduler.0.end=2",
        )
    )
    return work_dir


def test_train_writes_checkpoint_and_miou(trained):
    assert (trained / "iter_2.pth").is_file()
    assert (trained / "last_checkpoint").read_text().strip().endswith("iter_2.pth")
    assert list(trained.glob("best_mIoU_iter_2.pth"))
    # No temporary file of the atomic writer (which the runner's checkpoints go through).
    assert not [p for p in trained.iterdir() if p.name.endswith(TEMPORARY_SUFFIX)]
    val = [entry for entry in scalars(trained) if "mIoU" in entry]
    assert len(val) == 1 and 0 <= val[0]["mIoU"] <= 100


def test_resume_after_kill_continues_the_schedule(tmp_path, data_root):
    work_dir = tmp_path / "work"
    args = ["tools/train.py", CONFIG, "--work-dir", str(work_dir)] + small(
        data_root,
        "train_cfg.max_iters=6",
        "train_cfg.val_interval=100",
        "default_hooks.checkpoint.interval=2",
        "param_scheduler.0.end=6",
    )
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (work_dir / "iter_2.pth").exists() and time.monotonic() < deadline:
        assert process.poll() is None, "training ended before its first checkpoint"
        time.sleep(0.05)
    still_running = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert still_running and not (work_dir / "iter_6.pth").exists()

    result = run_tool(args + ["--resume"])
    log = result.stdout + result.stderr
    assert re.search(r"resumed epoch: \d+, iter: (2|4)", log), log[-2000:]
    resumed_from = int(re.search(r"resumed epoch: \d+, iter: (\d+)", log).group(1))
    logged = [int(i) for i in re.findall(r"Iter\(train\) \[\s*(\d+)/6\]", log)]
    assert logged == list(range(resumed_from + 1, 7)), logged
    allow_mmengine_checkpoint_types()
    final = torch.load(work_dir / "iter_6.pth", map_location="cpu", weights_only=True)
    assert final["meta"]["iter"] == 6
    # mmengine's PolyLR over end=6 steps: lr at 0-based iteration i is 0.02 * (1 - i / 5) ** 0.9.
    # The resumed iterations must take their lr from that curve, not restart it.
    history = final["message_hub"]["log_scalars"]["train/lr"].data[0].tolist()
    expected = [0.02 * (1 - i / 5) ** 0.9 for i in range(6)]
    assert history[-(6 - resumed_from) :] == pytest.approx(expected[resumed_from:])


def _model_from_checkpoint(path: Path) -> torch.nn.Module:
    cfg = Config.fromfile(CONFIG)
    init_default_scope("mmseg")
    model = MODELS.build(cfg.model)
    allow_mmengine_checkpoint_types()
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(state)
    return model


def test_fused_model_gives_the_same_miou(trained, tmp_path, data_root):
    # Random BN statistics: the defaults of a 2-iteration model would hide fusion errors.
    model = randomize_bn(_model_from_checkpoint(trained / "iter_2.pth"), seed=3)
    training_time = tmp_path / "training_time.pth"
    torch.save({"state_dict": model.state_dict()}, training_time)
    deployed = tmp_path / "deployed.pth"
    torch.save({"state_dict": reparameterize_model(model).state_dict()}, deployed)

    def miou(checkpoint: Path, *extra: str) -> tuple[float, dict]:
        out = tmp_path / f"out_{checkpoint.stem}{''.join(extra)}"
        result = run_tool(
            ["tools/test.py", CONFIG, str(checkpoint), "--work-dir", str(tmp_path / "w")]
            + ["--out", str(out), *extra]
            + small(data_root)
        )
        value = float(re.search(r"^mIoU: ([\d.]+)$", result.stdout, re.M).group(1))
        predictions = {p.name: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in out.glob("*.png")}
        assert len(predictions) == 3
        return value, predictions

    reference, reference_predictions = miou(training_time)
    for checkpoint, extra in ((training_time, ("--fuse",)), (deployed, ())):
        value, predictions = miou(checkpoint, *extra)
        assert value == pytest.approx(reference, abs=0.01)
        assert predictions.keys() == reference_predictions.keys()
        for name, labels in predictions.items():
            # Float round-off may flip a near-tie pixel, nothing more.
            assert (labels != reference_predictions[name]).mean() < 1e-3


def test_show_dir_writes_coloured_predictions(trained, tmp_path, data_root):
    show_dir = tmp_path / "show"
    run_tool(
        ["tools/test.py", CONFIG, str(trained / "iter_2.pth"), "--show-dir", str(show_dir)]
        + ["--work-dir", str(tmp_path / "w")]
        + small(data_root)
    )
    images = list(show_dir.rglob("*.png"))
    assert len(images) == 3
    drawn = cv2.imread(str(images[0]))
    assert drawn.shape[1] >= 128 and drawn.std() > 0


def test_two_process_torchrun_gloo(tmp_path, data_root):
    work_dir = tmp_path / "dist"
    result = subprocess.run(
        ["bash", "tools/dist_train.sh", CONFIG, "2", "--work-dir", str(work_dir)]
        + small(
            data_root,
            "train_cfg.max_iters=1",
            "train_cfg.val_interval=1",
            "default_hooks.checkpoint.interval=1",
        ),
        cwd=ROOT,
        env={**ENV, "PYTHON": sys.executable, "PORT": "29517"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    # mmengine reports the world size as "GPU number", whatever the device.
    assert "Distributed training: True" in log and "GPU number: 2" in log, log[-3000:]
    assert "backend': 'gloo'" in log
    assert (work_dir / "iter_1.pth").is_file()
    assert any("mIoU" in entry for entry in scalars(work_dir))


def test_test_tool_refuses_bad_input_in_one_line(tiny, tmp_path, capsys):
    config, checkpoint = str(tiny.config), str(tiny.checkpoint)
    work = ["--work-dir", str(tmp_path / "work")]
    existing = tmp_path / "predictions"
    existing.write_text("a file")
    status, err = tool_exit("test", [config, checkpoint, "--out", str(existing), *work], capsys)
    assert status == 2 and "is an existing file" in one_error_line(err, "test")

    status, err = tool_exit("test", [str(tmp_path / "nope.py"), checkpoint, *work], capsys)
    assert status == 2 and "nope.py' does not exist" in one_error_line(err, "test")

    no_data = ["--cfg-options", f"test_dataloader.dataset.data_root={tmp_path / 'nothing'}"]
    status, err = tool_exit("test", [config, checkpoint, *work, *no_data], capsys)
    assert status == 2 and "nothing" in one_error_line(err, "test")

    status, err = tool_exit("test", [config, checkpoint, "--fuse", *work, *no_data], capsys)
    line = one_error_line(err, "test")
    assert status == 2 and "--fuse" in line and "--skip-real-image" not in line


def test_test_tool_refuses_an_rgb_label_in_one_line(tiny, tmp_path, capsys):
    data = tmp_path / "data"
    make_synthetic_cityscapes(data, 2, 1, (64, 32), 0)
    (label,) = (data / "gtFine" / "val").rglob("*_labelTrainIds.png")
    cv2.imwrite(str(label), cv2.cvtColor(cv2.imread(str(label), 0), cv2.COLOR_GRAY2BGR))
    options = ["--cfg-options", f"test_dataloader.dataset.data_root={data}"]
    args = [str(tiny.config), str(tiny.checkpoint), "--work-dir", str(tmp_path / "w"), *options]
    status, err = tool_exit("test", args, capsys)
    assert status == 2 and label.name in one_error_line(err, "test")


def test_test_tool_never_replaces_a_file_of_its_work_dir(tiny, tmp_path, capsys):
    work_dir = tmp_path / "mine"
    work_dir.mkdir()
    users = work_dir / Path(tiny.config).name  # where mmengine dumps the config
    users.write_text("# the user's own notes\n")
    options = ["--cfg-options", f"test_dataloader.dataset.data_root={tiny.data_root}"]
    args = [str(tiny.config), str(tiny.checkpoint), "--work-dir", str(work_dir), *options]
    assert load_tool("test").main(args)["mIoU"] >= 0
    assert users.read_text() == "# the user's own notes\n"
    assert not [p for p in work_dir.glob("*.py") if p != users]  # no dump beside it
