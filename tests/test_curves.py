"""Training curves (repvgg_seg/curves.py, tools/plot_logs.py) from real runs' logs."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from mmengine.config import Config
from mmengine.runner import Runner
from PIL import Image

from repvgg_seg.curves import NoLogsError, plot_runs, read_run, unique_names
from repvgg_seg.datasets import make_synthetic_cityscapes
from repvgg_seg.pretrain import PretrainConfig, run_pretraining

from helpers import load_tool, one_error_line, tiny_config, tool_exit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def tiny_training(root: Path, iters: int = 2) -> Path:
    """mmengine's Runner on the synthetic config: ``iters`` iterations, validated at each."""
    data_root = make_synthetic_cityscapes(root / "data", 2, 1, (128, 64), 0)
    # mmengine keeps one Visualizer per name per process, with the save dir of the first
    # Runner that made it: a fresh name logs into this run's own folder.
    config = tiny_config(
        root / "tiny.py",
        data_root,
        train_cfg={"max_iters": iters, "val_interval": 1},
        default_hooks={"checkpoint": {"interval": iters}},
        visualizer={"name": f"curves_{root.name}"},
    )
    cfg = Config.fromfile(str(config))
    cfg.work_dir = str(root / "work")
    Runner.from_cfg(cfg).train()
    return Path(cfg.work_dir)


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    return tiny_training(tmp_path_factory.mktemp("curves"))


def tiny_image_folder(root: Path) -> Path:
    """An ImageFolder of 2 colour classes x 4 images of 32x32, train and val."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label, colour in enumerate(((200, 30, 30), (30, 30, 200))):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(4):
                pixels = np.clip(np.array(colour) + rng.normal(0, 20, (32, 32, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def pretrain_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pretrain")
    config = PretrainConfig(
        data_path=str(tiny_image_folder(root / "data")),
        model="RepVGG-A0",
        epochs=2,
        batch_size=4,
        workers=0,
        device="cpu",
        output_dir=str(root / "out"),
        train_crop_size=32,
        val_resize_size=36,
        val_crop_size=32,
    )
    run_pretraining(config)
    return root / "out"


def test_training_logs_give_loss_lr_and_miou_against_iteration(work_dir, tmp_path):
    run = read_run(work_dir)
    assert run.kind == "segmentation" and run.x_label == "iteration"
    assert [x for x, _ in run.panels["loss"]["loss"]] == [1.0, 2.0]
    assert [x for x, _ in run.panels["learning rate"]["lr"]] == [1.0, 2.0]
    # Validated after each iteration: one mIoU per validation, at the iteration it followed.
    (scalars,) = work_dir.glob("*/vis_data/scalars.json")
    logged = [
        json.loads(line)["mIoU"] for line in scalars.read_text().splitlines() if "mIoU" in line
    ]
    assert run.panels["val mIoU"]["mIoU"] == [(1.0, logged[0]), (2.0, logged[1])]
    out = plot_runs([run], tmp_path / "curves.png")
    width, height = png_size(out)
    assert width > 3 * height / 2  # three panels side by side


def test_tool_overlays_runs_and_resumed_runs_keep_the_later_record(work_dir, tmp_path):
    # A resumed run logs again the iterations after its last checkpoint, in a newer folder.
    (old,) = work_dir.glob("*/vis_data/scalars.json")
    resumed = tmp_path / "resumed"
    newer = resumed / "99999999_999999" / "vis_data"
    newer.mkdir(parents=True)
    (resumed / old.parents[1].name / "vis_data").mkdir(parents=True)
    (resumed / old.parents[1].name / "vis_data" / "scalars.json").write_text(old.read_text())
    (newer / "scalars.json").write_text('{"loss": 0.5, "lr": 0.01, "step": 2}\n{"loss": 0.4, "st')
    assert read_run(resumed).panels["loss"]["loss"][-1] == (2.0, 0.5)

    tool = load_tool("plot_logs")
    out = tmp_path / "both.png"
    tool.main([str(work_dir), str(resumed), "--out", str(out)])
    assert png_size(out)[0] > 0


def test_pretraining_dir_gives_loss_lr_and_top1_against_epoch(pretrain_dir, tmp_path):
    run = read_run(pretrain_dir)
    assert run.kind == "pretraining" and run.x_label == "epoch"
    assert set(run.panels["loss"]) == {"train", "val"}
    assert [x for x, _ in run.panels["val top-1"]["top-1"]] == [1.0, 2.0]
    assert png_size(plot_runs([run], tmp_path / "pretrain.png"))[0] > 0


def test_a_dir_without_logs_is_named(tmp_path, capsys):
    with pytest.raises(NoLogsError, match=str(tmp_path)):
        read_run(tmp_path)
    (tmp_path / "20260101_000000" / "vis_data").mkdir(parents=True)
    (tmp_path / "20260101_000000" / "vis_data" / "scalars.json").write_text("")
    with pytest.raises(NoLogsError, match="no training record"):
        read_run(tmp_path)


def test_the_tool_reports_no_logs_in_one_line(tmp_path, capsys):
    out = tmp_path / "x.png"
    status, err = tool_exit("plot_logs", [str(tmp_path), "--out", str(out)], capsys)
    assert status == 2 and str(tmp_path) in one_error_line(err, "plot_logs")
    assert not out.exists()


def test_runs_of_two_kinds_are_not_overlaid(work_dir, pretrain_dir, tmp_path):
    with pytest.raises(ValueError, match="Cannot overlay"):
        plot_runs([read_run(work_dir), read_run(pretrain_dir)], tmp_path / "x.png")


def test_legend_names_tell_runs_with_one_folder_name_apart(tmp_path):
    assert unique_names([tmp_path / "a" / "demo", tmp_path / "b" / "demo"]) == ["a/demo", "b/demo"]
    assert unique_names([tmp_path / "a", tmp_path / "b"]) == ["a", "b"]


@pytest.mark.parametrize(
    "log, where",
    [
        ('{"loss": 0.9, "lr": 0.01, "step": 1}\n{"loss": null, "lr": 0.01, "step": 2}\n', 2),
        ('{"loss": "high", "lr": 0.01, "step": 1}\n', 1),
        ('{"loss": 0.9, "lr": 0.01, "step": true}\n', 1),
        (b"\x00\x9f\xff random bytes \xfe", None),
    ],
    ids=["null", "string", "bool step", "random bytes"],
)
def test_a_damaged_log_is_one_line_naming_file_and_line(tmp_path, capsys, log, where):
    """null was a TypeError traceback, a string no file and no line, random bytes
    "'utf-8' codec can't decode ..." without the file."""
    scalars = tmp_path / "run" / "20260101_000000" / "vis_data" / "scalars.json"
    scalars.parent.mkdir(parents=True)
    scalars.write_bytes(log if isinstance(log, bytes) else log.encode())
    argv = [str(tmp_path / "run"), "--out", str(tmp_path / "curves.png")]
    status, err = tool_exit("plot_logs", argv, capsys)
    message = one_error_line(err, "plot_logs")
    assert status == 2 and str(scalars) in message
    assert (f"line {where}:" in message) if where else ("not a text log" in message)
    assert not (tmp_path / "curves.png").exists()
