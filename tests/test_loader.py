"""repvgg_seg.loader: every checkpoint form loads strictly to the same logits, and what does
not fit (another form, missing keys, NaN weights, a mixed deploy set) is refused naming the
files, by the library and by every tool that loads (the session's ``tiny`` model).
"""

from __future__ import annotations

import copy
import re
import shutil

import pytest
import torch

from repvgg_seg.checkpoint import CheckpointError
from repvgg_seg.deploy import (
    DeployOptions,
    DeployReport,
    deploy_checkpoint,
)
from repvgg_seg.equivalence import compare_logits
from repvgg_seg.loader import load_segmentor
from repvgg_seg.reparam import reparameterize_model

from helpers import QUICK_DEPLOY, logits, one_error_line, tool_exit

# --------------------------------------------------------------------- every form loads


@pytest.fixture(scope="module")
def deployed(tiny, tmp_path_factory) -> DeployReport:
    """``tiny`` deployed once; a test that changes its files changes copies."""
    options = DeployOptions(check_real_image=False, **QUICK_DEPLOY)
    return deploy_checkpoint(tiny.config, tiny.checkpoint, tmp_path_factory.mktemp("dep"), options)


def test_every_checkpoint_form_loads_strictly_to_the_same_logits(tiny, deployed, tmp_path):
    expected = logits(tiny.model)
    fused = tmp_path / "fused.pth"
    fused_model = reparameterize_model(copy.deepcopy(tiny.model))
    torch.save({"state_dict": fused_model.state_dict()}, fused)
    ddp = tmp_path / "ddp.pth"
    state = {f"module.{key}": value for key, value in tiny.model.state_dict().items()}
    torch.save({"state_dict": state}, ddp)
    report = deployed
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


def test_a_checkpoint_that_does_not_fit_names_both_files(tiny, deployed, tmp_path):
    report = deployed
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
        status, err = tool_exit(tool, argv, capsys)
        assert status == 2 and expected in one_error_line(err, tool), (tool, err)
    assert not (tmp_path / "deploy").exists() or not list((tmp_path / "deploy").iterdir())


def test_a_deploy_set_mixed_from_two_runs_is_refused(deployed, tmp_path):
    config = tmp_path / deployed.config.name
    checkpoint = shutil.copy(deployed.checkpoint, tmp_path)
    text = deployed.config.read_text()
    # What a run killed between publishing the checkpoint and the config leaves.
    config.write_text(re.sub(r"deploy_id = '[^']+'", "deploy_id = 'earlier-run'", text))
    load_segmentor(deployed.config, checkpoint)  # the copies alone are a consistent set
    with pytest.raises(CheckpointError, match="different tools/deploy.py runs"):
        load_segmentor(config, checkpoint)


# --------------------------------------------------------------------- bf16 (issue 17)
