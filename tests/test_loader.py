"""repvgg_seg.loader (every checkpoint form, strictly), and the deploy and test tools on it.

One tiny PSPNet-RepVGG-A0 with random BN statistics on a two-image synthetic Cityscapes;
the tools run in-process through ``repvgg_seg.cli.run_tool``, so their exit status and
their one-line errors are what a user sees.
"""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import pytest
import torch
from mmengine.config import Config
from test_deploy import load_tool

from repvgg_seg.checkpoint import CheckpointError, read_checkpoint
from repvgg_seg.cli import run_tool
from repvgg_seg.datasets import make_synthetic_cityscapes
from repvgg_seg.deploy import (
    BF16_RTOL,
    DeployOptions,
    OutputFolder,
    deploy_checkpoint,
    native_bf16,
)
from repvgg_seg.dir_lock import WorkDirBusyError
from repvgg_seg.equivalence import compare_logits
from repvgg_seg.inference import load_inference_model, predict_labels, read_image
from repvgg_seg.loader import build_segmentor, load_segmentor
from repvgg_seg.output_dir import RECORD_NAME, WrittenRecord
from repvgg_seg.reparam import reparameterize_model

from helpers import randomize_bn

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "pspnet_repvgg_a0_synthetic.py"
# Deploy checks: no Winograd (these convs are too narrow to gain), small random input.
QUICK = {"random_size": (32, 64), "winograd": False}


@dataclass
class Tiny:
    config: Path
    checkpoint: Path
    data_root: Path
    model: torch.nn.Module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Tiny:
    root = tmp_path_factory.mktemp("loader")
    data_root = make_synthetic_cityscapes(root / "data", 2, 1, (64, 32), 0)
    config = root / "tiny.py"
    config.write_text(
        f"_base_ = {str(CONFIG)!r}\n"
        f"data_root = {str(data_root) + '/'!r}\n"
        "model = dict(decode_head=dict(channels=16), auxiliary_head=dict(channels=8))\n"
        "test_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),\n"
        "    dict(type='PackSegInputs')]\n"
        "val_dataloader = dict(dataset=dict(data_root=data_root, pipeline=test_pipeline))\n"
        "test_dataloader = val_dataloader\n"
        "log_level = 'WARNING'\n"
    )
    model = randomize_bn(build_segmentor(config), seed=1)
    checkpoint = root / "trained.pth"
    torch.save({"meta": {"iter": 1}, "state_dict": model.state_dict()}, checkpoint)
    return Tiny(config, checkpoint, data_root, model)


def exit_status(tool: str, args: list[str], capsys) -> tuple[int, str]:
    """Runs ``tools/<tool>.py`` in-process as its ``__main__`` does: (status, stderr)."""
    module = load_tool(tool)
    with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit) as ended:
        patch.setattr(sys, "argv", [f"tools/{tool}.py", *args])
        run_tool(lambda: module.main(args))
    return ended.value.code, capsys.readouterr().err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tools/") and ": error: " in lines[0], err
    return lines[0]


@torch.no_grad()
def logits(model: torch.nn.Module) -> torch.Tensor:
    image = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    return model(image.to(next(model.parameters()).device), mode="tensor").float()


# --------------------------------------------------------------------- every form loads


def test_every_checkpoint_form_loads_strictly_to_the_same_logits(tiny, tmp_path):
    expected = logits(tiny.model)
    fused = tmp_path / "fused.pth"
    fused_model = reparameterize_model(copy.deepcopy(tiny.model))
    torch.save({"state_dict": fused_model.state_dict()}, fused)
    ddp = tmp_path / "ddp.pth"
    state = {f"module.{key}": value for key, value in tiny.model.state_dict().items()}
    torch.save({"state_dict": state}, ddp)
    options = DeployOptions(check_real_image=False, **QUICK)
    report = deploy_checkpoint(tiny.config, tiny.checkpoint, tmp_path / "deploy", options)
    forms = {
        "training-time": (tiny.config, tiny.checkpoint),
        "fused": (tiny.config, fused),
        "DDP": (tiny.config, ddp),
        "deployed": (report.config, report.checkpoint),
    }
    for name, (config, checkpoint) in forms.items():
        model = load_segmentor(config, checkpoint)
        agreement = compare_logits(expected, logits(model))
        assert agreement.ok, (name, agreement.describe())
        assert model.cfg.filename == str(config) and not model.training
    assert load_segmentor(tiny.config, fused).backbone.deploy
    assert load_segmentor(tiny.config, tiny.checkpoint, fuse=True).backbone.deploy


def test_a_checkpoint_that_does_not_fit_names_both_files(tiny, tmp_path):
    report = deploy_checkpoint(
        tiny.config, tiny.checkpoint, tmp_path, DeployOptions(check_real_image=False, **QUICK)
    )
    cases = [
        (tiny.config, report.checkpoint, r"\*_deploy\.py config written beside it"),
        (report.config, tiny.checkpoint, r"training-time RepVGG blocks.*tools/deploy\.py"),
    ]
    broken = tmp_path / "broken.pth"
    state = dict(tiny.model.state_dict())
    del state["decode_head.conv_seg.bias"]
    torch.save({"state_dict": state}, broken)
    cases.append((tiny.config, broken, r"missing \(1\): decode_head\.conv_seg\.bias"))
    for config, checkpoint, hint in cases:
        with pytest.raises(CheckpointError, match=hint) as raised:
            load_segmentor(config, checkpoint)
        assert str(config) in str(raised.value) and str(checkpoint) in str(raised.value)


def test_nan_or_inf_weights_are_refused_naming_the_file(tiny, tmp_path, capsys):
    # Issue 25 case 10: test gave an mIoU, infer labelled every pixel 0, deploy blamed the
    # fusion. The loader refuses, so every tool does.
    state = dict(tiny.model.state_dict())
    state["backbone.stem.branch_3x3.conv.weight"] = state[
        "backbone.stem.branch_3x3.conv.weight"
    ].clone()
    state["backbone.stem.branch_3x3.conv.weight"][0, 0, 0, 0] = float("nan")
    state["decode_head.conv_seg.bias"] = torch.full_like(state["decode_head.conv_seg.bias"], 1e30)
    state["decode_head.conv_seg.bias"][0] = float("inf")
    diverged = tmp_path / "diverged.pth"
    torch.save({"state_dict": state}, diverged)
    expected = f"'{diverged}' holds NaN or infinite weights in 2 of {len(state)} tensors"
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        load_segmentor(tiny.config, diverged)
    config, image = str(tiny.config), next(tiny.data_root.rglob("*_leftImg8bit.png"))
    runs = {
        "test": [config, str(diverged), "--work-dir", str(tmp_path / "w")],
        "infer": [config, str(diverged), str(image), "--out-dir", str(tmp_path / "infer")],
        "deploy": [config, str(diverged), str(tmp_path / "deploy"), "--skip-real-image"],
    }
    for tool, argv in runs.items():
        status, err = exit_status(tool, argv, capsys)
        assert status == 2 and expected in one_line_error(err), (tool, err)
    assert not (tmp_path / "deploy").exists() or not list((tmp_path / "deploy").iterdir())


def test_a_deploy_set_mixed_from_two_runs_is_refused(tiny, tmp_path):
    report = deploy_checkpoint(
        tiny.config, tiny.checkpoint, tmp_path, DeployOptions(check_real_image=False, **QUICK)
    )
    text = report.config.read_text()
    # What a run killed between publishing the checkpoint and the config leaves.
    report.config.write_text(re.sub(r"deploy_id = '[^']+'", "deploy_id = 'earlier-run'", text))
    with pytest.raises(CheckpointError, match="different tools/deploy.py runs"):
        load_segmentor(report.config, report.checkpoint)


# --------------------------------------------------------------------- deploy (issue 20)


def test_deploy_accepts_a_fused_checkpoint(tiny, tmp_path, capsys):
    fused = tmp_path / "fused.pth"
    fused_model = reparameterize_model(copy.deepcopy(tiny.model))
    torch.save({"state_dict": fused_model.state_dict()}, fused)
    out = tmp_path / "out"
    assert load_tool("deploy").main([str(tiny.config), str(fused), str(out), "--no-winograd"]) == 0
    assert "random input: max |logit diff|" in capsys.readouterr().out
    deployed = load_segmentor(out / "tiny_deploy.py", out / "tiny_deploy.pth")
    assert compare_logits(logits(tiny.model), logits(deployed)).ok


def test_deploy_publishes_one_consistent_set(tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    # An earlier deploy of this config with --onnx (as the folder's record says), and a
    # user's own file.
    (out / "tiny_deploy.onnx").write_bytes(b"an older model")
    WrittenRecord(out).add(out / "tiny_deploy.onnx", "deploy", out / "tiny_deploy.onnx")
    (out / "notes.txt").write_text("mine")
    report = deploy_checkpoint(
        tiny.config, tiny.checkpoint, out, DeployOptions(check_real_image=False, **QUICK)
    )
    assert report.written and report.removed_earlier == [out / "tiny_deploy.onnx"]
    assert sorted(p.name for p in out.iterdir() if p.name != RECORD_NAME) == [
        "notes.txt",
        "tiny_deploy.pth",
        "tiny_deploy.py",
    ]
    deploy_id = Config.fromfile(str(report.config)).deploy_id
    assert read_checkpoint(report.checkpoint)["meta"]["deploy_id"] == deploy_id


def test_deploy_says_in_one_line_which_earlier_file_it_removes(tiny, tmp_path, capsys):
    # Case 6: deploy's own advice is "once with --onnx and once with --bf16"; the second
    # removes the first's ONNX (a model that is no longer the published one), and says so.
    out = tmp_path / "out"
    args = [str(tiny.config), str(tiny.checkpoint), str(out), "--random-size", "32", "64"]
    onnx = ["--onnx", "--onnx-atol", "1"]  # the tiny model's logits reach 3e4
    assert load_tool("deploy").main([*args, *onnx, "--skip-real-image"]) == 0
    assert (out / "tiny_deploy.onnx").is_file()
    capsys.readouterr()
    assert load_tool("deploy").main([*args, "--skip-real-image", "--winograd", "off"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "removed" in line]
    assert lines == [
        f"removed 1 file(s) of the earlier deploy that this one does not write (they belong "
        f"to the replaced model): {out / 'tiny_deploy.onnx'}"
    ]
    assert not (out / "tiny_deploy.onnx").exists()


def test_deploy_removes_a_killed_runs_staging_folder_and_refuses_a_live_run(tiny, tmp_path):
    out = tmp_path / "out"
    with OutputFolder(out, "tiny") as live:  # as a live deploy holds it
        with pytest.raises(WorkDirBusyError, match="in use by another tools/deploy.py run"):
            deploy_checkpoint(tiny.config, tiny.checkpoint, out, DeployOptions(**QUICK))
        assert live.staging.is_dir()  # a live run's staging folder is left alone
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, signal\n"
            "from repvgg_seg.deploy.publish import OutputFolder\n"
            f"folder = OutputFolder({str(out)!r}, 'tiny').__enter__()\n"
            "(folder.staging / 'tiny_deploy.pth').write_bytes(bytes(10000))\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert killed.returncode == -9
    (leftover,) = [p for p in out.iterdir() if p.name.endswith(".staging")]
    report = deploy_checkpoint(
        tiny.config, tiny.checkpoint, out, DeployOptions(check_real_image=False, **QUICK)
    )
    assert report.removed_leftovers == [leftover]
    published = sorted(p.name for p in out.iterdir() if p.name != RECORD_NAME)
    assert published == ["tiny_deploy.pth", "tiny_deploy.py"]


def test_sigterm_during_a_deploy_leaves_nothing_in_the_output_folder(tiny, tmp_path):
    out = tmp_path / "out"
    # tools/deploy.py itself, held inside its staging step until the test has seen the
    # staging folder and sent SIGTERM (a `kill`), which must unwind like Ctrl-C.
    script = (
        "import runpy, sys, time\n"
        "import repvgg_seg.deploy.pipeline as pipeline\n"
        "def held():\n"
        "    print('staging', flush=True)\n"
        "    time.sleep(120)\n"
        "pipeline.new_deploy_id = held\n"
        f"sys.argv = ['tools/deploy.py', {str(tiny.config)!r}, {str(tiny.checkpoint)!r}, "
        f"{str(out)!r}, '--skip-real-image', '--no-winograd']\n"
        "runpy.run_path('tools/deploy.py', run_name='__main__')\n"
    )
    tool = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        assert tool.stdout.readline() == "staging\n"
        assert [p for p in out.iterdir() if p.name.endswith(".staging")]
        tool.send_signal(signal.SIGTERM)
        _, err = tool.communicate(timeout=60)
    finally:
        tool.kill()
    assert tool.returncode == 143, err
    assert err.strip().splitlines() == ["tools/deploy.py: error: terminated (SIGTERM)"]
    assert list(out.iterdir()) == []  # no staging folder, no lock file


def test_deploy_refuses_unusable_output_folders_in_one_line(tiny, tmp_path, capsys):
    args = [str(tiny.config), str(tiny.checkpoint)]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    status, err = exit_status("deploy", [*args, str(a_file)], capsys)
    assert status == 2 and "is a file, not a folder" in one_line_error(err)

    clash = tmp_path / "clash"
    (clash / "tiny_deploy.pth").mkdir(parents=True)
    status, err = exit_status("deploy", [*args, str(clash)], capsys)
    assert status == 2 and "is a folder, but tools/deploy.py writes a file" in one_line_error(err)

    if os.geteuid() != 0:  # root writes into read-only folders
        read_only = tmp_path / "read_only"
        read_only.mkdir(mode=0o555)
        status, err = exit_status("deploy", [*args, str(read_only)], capsys)
        assert status == 2 and "is not writable" in one_line_error(err)


# --------------------------------------------------------------------- test.py (issue 20)


def test_test_tool_refuses_bad_input_in_one_line(tiny, tmp_path, capsys):
    config, checkpoint = str(tiny.config), str(tiny.checkpoint)
    work = ["--work-dir", str(tmp_path / "work")]
    existing = tmp_path / "predictions"
    existing.write_text("a file")
    status, err = exit_status("test", [config, checkpoint, "--out", str(existing), *work], capsys)
    assert status == 2 and "is an existing file" in one_line_error(err)

    status, err = exit_status("test", [str(tmp_path / "nope.py"), checkpoint, *work], capsys)
    assert status == 2 and "nope.py' does not exist" in one_line_error(err)

    no_data = ["--cfg-options", f"test_dataloader.dataset.data_root={tmp_path / 'nothing'}"]
    status, err = exit_status("test", [config, checkpoint, *work, *no_data], capsys)
    assert status == 2 and "nothing" in one_line_error(err)

    status, err = exit_status("test", [config, checkpoint, "--fuse", *work, *no_data], capsys)
    line = one_line_error(err)
    assert status == 2 and "--fuse" in line and "--skip-real-image" not in line


def test_test_tool_refuses_an_rgb_label_in_one_line(tiny, tmp_path, capsys):
    data = tmp_path / "data"
    make_synthetic_cityscapes(data, 2, 1, (64, 32), 0)
    (label,) = (data / "gtFine" / "val").rglob("*_labelTrainIds.png")
    cv2.imwrite(str(label), cv2.cvtColor(cv2.imread(str(label), 0), cv2.COLOR_GRAY2BGR))
    options = ["--cfg-options", f"test_dataloader.dataset.data_root={data}"]
    args = [str(tiny.config), str(tiny.checkpoint), "--work-dir", str(tmp_path / "w"), *options]
    status, err = exit_status("test", args, capsys)
    assert status == 2 and label.name in one_line_error(err)


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


# --------------------------------------------------------------------- bf16 (issue 17)


def test_bf16_deploy_round_trips_through_its_config_and_reports_agreement(tiny, tmp_path, capsys):
    out = tmp_path / "bf16"
    args = [str(tiny.config), str(tiny.checkpoint), str(out), "--bf16", "--random-size", "32", "64"]
    assert load_tool("deploy").main(args) == 0
    printed = capsys.readouterr().out
    agreement = re.search(r"bf16 vs float32, dataset image: pixel agreement ([\d.]+) %", printed)
    assert agreement and float(agreement.group(1)) >= 99.0, printed
    assert ("warning: this CPU has no native bfloat16" in printed) == (native_bf16() is False)

    config, checkpoint = out / "tiny_deploy.py", out / "tiny_deploy.pth"
    assert Config.fromfile(str(config)).model.precision == "bf16"
    state = read_checkpoint(checkpoint)["state_dict"]
    assert state["backbone.stages.1.0.fused_conv.weight"].dtype == torch.bfloat16
    model = load_segmentor(config, checkpoint)
    conv = model.backbone.stages[1][0].fused_conv
    assert conv.weight.dtype == torch.bfloat16
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert compare_logits(logits(tiny.model), logits(model), rtol=BF16_RTOL).ok

    # tools/test.py and inference run it through the loader.
    metrics = load_tool("test").main([str(config), str(checkpoint), "--work-dir", str(tmp_path)])
    assert 0 <= metrics["mIoU"] <= 100
    inference = load_inference_model(config, checkpoint)
    (image,) = sorted((tiny.data_root / "leftImg8bit" / "val").rglob("*.png"))
    (labels,) = predict_labels(inference, [read_image(image)])
    assert labels.shape == read_image(image).shape[:2]
