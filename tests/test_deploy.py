"""Deploying whole segmentors: exact fusion, strict reloading, ONNX, and the full tool chain."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import repvgg_seg  # noqa: F401  (registers the RepVGG backbone)
from repvgg_seg.checkpoint import CheckpointError, read_checkpoint
from repvgg_seg.cli import CheckFailedError, UsageError
from repvgg_seg.deploy import (
    BF16_RTOL,
    Agreement,
    DeployOptions,
    DeployReport,
    compare_on_tensor,
    deploy_checkpoint,
    deploy_segmentor,
    find_conv_bn_pairs,
    fold_conv_bn,
    is_bf16_deployment,
    make_deploy_config,
    native_bf16,
)
from repvgg_seg.equivalence import FusionMismatchError, compare_logits
from repvgg_seg.inference import load_inference_model, predict_labels, read_image
from repvgg_seg.loader import load_segmentor
from repvgg_seg.reparam import reparameterize_model

from helpers import (
    assert_outputs_close,
    load_tool,
    logits,
    one_error_line,
    randomize_bn,
    tiny_config,
    tool_exit,
)

BN = {"type": "BN", "requires_grad": True}
BACKBONES = {
    "repvgg_a0_fast": (
        {"type": "RepVGG", "arch": "A0", "dilation_mode": "fast", "norm_cfg": BN},
        (1280, 192),
    ),
    "resnet18_d8": (
        {
            "type": "ResNetV1c",
            "depth": 18,
            "dilations": (1, 1, 2, 4),
            "strides": (1, 2, 1, 1),
            "contract_dilation": True,
            "norm_cfg": BN,
        },
        (512, 256),
    ),
}


def pspnet_cfg(backbone: str) -> dict:
    backbone_cfg, (in_channels, aux_channels) = BACKBONES[backbone]
    head = {"norm_cfg": BN, "num_classes": 5, "align_corners": False, "dropout_ratio": 0.1}
    return {
        "type": "EncoderDecoder",
        "data_preprocessor": {
            "type": "SegDataPreProcessor",
            "mean": [123.675, 116.28, 103.53],
            "std": [58.395, 57.12, 57.375],
            "bgr_to_rgb": True,
        },
        "backbone": copy.deepcopy(backbone_cfg),
        "decode_head": {
            "type": "PSPHead",
            "in_channels": in_channels,
            "in_index": 3,
            "channels": 16,
            "pool_scales": (1, 2, 3, 6),
            **head,
        },
        "auxiliary_head": {
            "type": "FCNHead",
            "in_channels": aux_channels,
            "in_index": 2,
            "channels": 8,
            "num_convs": 1,
            "concat_input": False,
            **head,
        },
        "test_cfg": {"mode": "whole"},
    }


def build(model_cfg: dict) -> nn.Module:
    init_default_scope("mmseg")
    model = MODELS.build(copy.deepcopy(model_cfg))
    model.eval()
    return model


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def trained_and_deployed(request):
    model_cfg = pspnet_cfg(request.param)
    trained = randomize_bn(build(model_cfg), seed=1)
    deployed = copy.deepcopy(trained)
    pairs = deploy_segmentor(deployed, torch.randn(1, 3, 32, 32))
    return model_cfg, trained, deployed, pairs


def test_deployed_segmentor_is_exact_and_has_no_bn_left(trained_and_deployed):
    _, trained, deployed, pairs = trained_and_deployed
    image = torch.randn(2, 3, 72, 104)
    with torch.no_grad():
        assert_outputs_close(deployed(image, mode="tensor"), trained(image, mode="tensor"))
    agreement = compare_on_tensor(trained, deployed, image)
    assert agreement.changed == 0
    assert pairs, "no conv+BN pair was folded"
    assert deployed.auxiliary_head is None
    assert not [name for name, m in deployed.named_modules() if isinstance(m, _BatchNorm)]


def test_deploy_config_loads_deployed_checkpoint_strictly(trained_and_deployed):
    model_cfg, _, deployed, pairs = trained_and_deployed
    deploy_cfg = make_deploy_config(Config({"model": model_cfg}), pairs, winograd="on")
    assert deploy_cfg.model.type == "DeployedEncoderDecoder"
    assert deploy_cfg.model.auxiliary_head is None
    rebuilt = build(deploy_cfg.model.to_dict())
    rebuilt.load_state_dict(deployed.state_dict(), strict=True)
    image = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        # The rebuilt model runs its 512-channel 3x3 convs by Winograd: equal up to round-off.
        assert_outputs_close(rebuilt(image, mode="tensor"), deployed(image, mode="tensor"))


class PreNorm(nn.Module):
    """Conv registered before BN, but the BN runs first: must not be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.conv(self.bn(x))


def test_only_bns_reading_a_conv_output_are_folded():
    model = nn.Sequential(PreNorm(), nn.Conv2d(4, 6, 3, bias=True), nn.BatchNorm2d(6), nn.ReLU())
    model = randomize_bn(model, seed=2).eval()
    image = torch.randn(2, 4, 9, 9)
    pairs = find_conv_bn_pairs(model, lambda: model(image))
    assert pairs == [("1", "2")]
    with torch.no_grad():
        expected = model(image)
        fold_conv_bn(model, pairs)
        assert_outputs_close(model(image), expected)
    assert isinstance(model[2], nn.Identity) and isinstance(model[0].bn, nn.BatchNorm2d)


def test_checkpoint_with_foreign_objects_is_refused(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": PreNorm()}, path)
    with pytest.raises(ValueError, match="bad.pth"):
        read_checkpoint(path)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def small_trained_model(tmp_path_factory):
    """The synthetic-data config trained for a few iterations: (config, checkpoint)."""
    from mmengine.runner import Runner

    from repvgg_seg.datasets.synthetic import make_synthetic_cityscapes

    root = tmp_path_factory.mktemp("deploy_e2e")
    data_root = make_synthetic_cityscapes(
        root / "data", num_train=4, num_val=2, image_size=(128, 64)
    )
    config = tiny_config(
        root / "config.py",
        data_root,
        train_cfg={"max_iters": 3},
        default_hooks={"checkpoint": {"interval": 3}},
    )
    cfg = Config.fromfile(str(config))
    cfg.work_dir = str(root / "work")
    runner = Runner.from_cfg(cfg)
    runner.train()
    # mmengine's own iter_3.pth also pickles its message hub with bound methods
    # (builtins.getattr), which weights_only=True refuses; keep model weights and metadata.
    checkpoint = root / "trained.pth"
    meta = {"dataset_meta": runner.train_dataloader.dataset.metainfo, "iter": 3}
    torch.save({"meta": meta, "state_dict": runner.model.state_dict()}, checkpoint)
    return config, checkpoint


def test_deploy_tool_changes_no_pixel_and_keeps_miou(small_trained_model, tmp_path, capsys):
    config, checkpoint = small_trained_model
    out_dir = tmp_path / "deploy"
    # A low channel threshold so that this small model's convs run by Winograd too.
    args = [str(config), str(checkpoint), str(out_dir), "--winograd", "on"]
    args += ["--winograd-min-channels", "16", "--onnx"]
    assert load_tool("deploy").main(args) == 0
    printed = capsys.readouterr().out
    # The random-input and the dataset-image checks, and ONNX Runtime on three inputs,
    # all without a changed pixel.
    assert printed.count("changed pixels 0/") == 5, printed
    winograd_convs = int(printed.split("convs run by Winograd F(4x4,3x3) on CPU: ")[1].split()[0])
    assert winograd_convs >= 20, printed  # 21 backbone layers + the PSP bottleneck
    assert (out_dir / f"{config.stem}_deploy.onnx").is_file()

    deployed_ckpt = out_dir / f"{config.stem}_deploy.pth"
    deployed_cfg = out_dir / f"{config.stem}_deploy.py"
    state = read_checkpoint(deployed_ckpt)["state_dict"]
    assert not any(".branch_" in key or key.startswith("auxiliary_head.") for key in state)

    test_tool = load_tool("test")
    trained = test_tool.main([str(config), str(checkpoint), "--work-dir", str(tmp_path / "t1")])
    fused = test_tool.main(
        [str(deployed_cfg), str(deployed_ckpt), "--work-dir", str(tmp_path / "t2")]
    )
    assert trained["mIoU"] == fused["mIoU"]
    assert trained["aAcc"] == fused["aAcc"]


def test_deploy_report_on_a_real_image(small_trained_model, tmp_path):
    config, checkpoint = small_trained_model
    report = deploy_checkpoint(config, checkpoint, tmp_path, DeployOptions(random_size=(48, 80)))
    assert report.folded_pairs == 5  # PSP head: 4 pyramid convs and the bottleneck
    for agreement in (report.random_input, report.real_image):
        assert agreement.changed == 0
        assert agreement.max_relative_diff < 1e-5
    assert report.real_image.num_compared == 128 * 64


def near_tie_checkpoint(checkpoint: Path, path: Path) -> Path:
    """The trained checkpoint with classes 0 and 1 made identical and winning: exact ties."""
    state = read_checkpoint(checkpoint)
    weights = state["state_dict"]
    weight, bias = weights["decode_head.conv_seg.weight"], weights["decode_head.conv_seg.bias"]
    weight[1] = weight[0]
    bias[1] = bias[0] = bias.max() + 20
    torch.save(state, path)
    return path


def deploy_then(change):
    """A stand-in for ``deploy_segmentor`` that applies ``change`` to the deployed model."""
    from repvgg_seg.deploy import pipeline

    real = pipeline.deploy_segmentor

    def deploy(model, *args, **kwargs):
        pairs = real(model, *args, **kwargs)
        with torch.no_grad():
            change(model)
        return pairs

    return deploy


def test_deploy_accepts_round_off_flips_on_near_ties(small_trained_model, tmp_path, monkeypatch):
    """Exact ties everywhere, then a float32-sized nudge: every pixel flips, none for real."""
    from repvgg_seg.deploy import pipeline

    config, checkpoint = small_trained_model
    tied = near_tie_checkpoint(checkpoint, tmp_path / "tied.pth")

    def nudge(model):
        model.decode_head.conv_seg.bias[1] += 1e-3  # 1e-5 of the logits (about 200)

    monkeypatch.setattr(pipeline, "deploy_segmentor", deploy_then(nudge))
    options = DeployOptions(random_size=(48, 80))
    report = deploy_checkpoint(config, tied, tmp_path / "out", options)
    for _, agreement in report.fusion_checks:
        assert agreement.changed > 0  # the old rule (no changed pixel at all) failed here
        assert agreement.changed_beyond_margin == 0
        assert agreement.ok
    assert report.passed and report.written and report.checkpoint.is_file()


def test_deploy_refuses_a_broken_fusion_and_writes_nothing(small_trained_model, tmp_path, capsys):
    from repvgg_seg.deploy import pipeline

    config, checkpoint = small_trained_model

    def break_fusion(model):
        model.backbone.stages[1][0].fused_conv.bias += 0.5

    out_dir = tmp_path / "out"
    tool = load_tool("deploy")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "deploy_segmentor", deploy_then(break_fusion))
        with pytest.raises(CheckFailedError, match="nothing was written"):
            tool.main([str(config), str(checkpoint), str(out_dir)])
    assert "FAILED" in capsys.readouterr().out
    # No deployed files, no staging folder, no record of what tools wrote.
    assert list(out_dir.iterdir()) == []


def test_deploy_with_a_missing_dataset_writes_nothing(small_trained_model, tmp_path, capsys):
    config, checkpoint = small_trained_model
    moved = tmp_path / "config.py"
    moved.write_text(
        config.read_text() + "\ntest_dataloader = dict(dataset=dict(data_root='/nope/'))\n"
    )
    out_dir = tmp_path / "out"
    with pytest.raises(UsageError, match="/nope/.*--skip-real-image"):
        load_tool("deploy").main([str(moved), str(checkpoint), str(out_dir)])
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_test_tool_fuse_stops_on_a_broken_fusion(small_trained_model, tmp_path, monkeypatch):
    config, checkpoint = small_trained_model
    tool = load_tool("test")
    real = tool.reparameterize_model

    def broken(model, *args, **kwargs):
        result = real(model, *args, **kwargs)
        with torch.no_grad():
            model.backbone.stages[1][0].fused_conv.bias += 0.5
        return result

    monkeypatch.setattr(tool, "reparameterize_model", broken)
    with pytest.raises(FusionMismatchError, match="beyond the round-off margin"):
        tool.main([str(config), str(checkpoint), "--fuse", "--work-dir", str(tmp_path / "w")])


def test_deploy_names_a_checkpoint_that_does_not_fit_in_one_line(
    small_trained_model, tmp_path, capsys
):
    config, checkpoint = small_trained_model
    state = read_checkpoint(checkpoint)
    del state["state_dict"]["decode_head.conv_seg.bias"]
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    with pytest.raises(CheckpointError) as raised:
        load_tool("deploy").main([str(config), str(broken), str(tmp_path / "out")])
    error = str(raised.value)
    assert "missing (1): decode_head.conv_seg.bias" in error and str(config) in error
    assert len(error) < 1000  # the config's text is not dumped


# --------------------------------------------------------------------------- bf16 deployments


@pytest.fixture(scope="module")
def bf16_deployment(small_trained_model, tmp_path_factory):
    """A tools/deploy.py --bf16 output of the small model: (deploy config, checkpoint)."""
    config, checkpoint = small_trained_model
    options = DeployOptions(precision="bf16", check_real_image=False, random_size=(48, 80))
    report = deploy_checkpoint(config, checkpoint, tmp_path_factory.mktemp("bf16"), options)
    assert report.written
    return report.config, report.checkpoint


@pytest.mark.parametrize("flags", [["--bf16"], ["--onnx"], []])
def test_deploy_recognises_a_bf16_deployment_up_front(
    small_trained_model, bf16_deployment, tmp_path, capsys, flags
):
    """Deployed again, a bf16 model was its own float32 reference ("pixel agreement 100 %",
    proving nothing) or, with --onnx, failed as a fusion that did not happen."""
    config, checkpoint = bf16_deployment
    out_dir = tmp_path / "again"
    argv = [str(config), str(checkpoint), str(out_dir), "--skip-real-image", *flags]
    status, err = tool_exit("deploy", argv, capsys)
    message = one_error_line(err, "deploy")
    assert status == 2 and "is a bf16 deployment" in message
    assert f"deployed from {str(small_trained_model[1])!r}" in message  # what to pass
    assert not out_dir.exists()  # refused before anything is written or created


def test_quantize_recognises_a_bf16_deployment_up_front(bf16_deployment, tmp_path, capsys):
    """It was 304 lines of torch.export traceback, and an empty output folder left."""
    config, checkpoint = bf16_deployment
    out_dir = tmp_path / "int8"
    status, err = tool_exit("quantize", [str(config), str(checkpoint), str(out_dir)], capsys)
    assert status == 2 and "is a bf16 deployment" in one_error_line(err, "quantize")
    assert "training" in one_error_line(err, "quantize")
    assert not out_dir.exists()  # it was left empty


def test_a_bf16_checkpoint_is_recognised_by_its_meta_too(bf16_deployment):
    config, checkpoint = bf16_deployment
    fp32_config = Config.fromfile(str(config))
    fp32_config.model.precision = "fp32"  # a float32 config would cast the weights back
    assert not is_bf16_deployment(fp32_config)
    assert is_bf16_deployment(fp32_config, read_checkpoint(checkpoint))
    assert is_bf16_deployment(Config.fromfile(str(config)))


# --------------------------------------------------------------------------- the tool


def test_deploy_accepts_cfg_options_as_its_dataset_message_says(
    small_trained_model, tmp_path, capsys
):
    config, checkpoint = small_trained_model
    data_root = Config.fromfile(str(config)).data_root
    moved = tmp_path / "config.py"
    moved.write_text(
        config.read_text() + "\ntest_dataloader = dict(dataset=dict(data_root='/nope/'))\n"
    )
    status, err = tool_exit("deploy", [str(moved), str(checkpoint), str(tmp_path / "a")], capsys)
    assert status == 2 and "--cfg-options test_dataloader.dataset.data_root=" in err
    argv = [str(moved), str(checkpoint), str(tmp_path / "b"), "--random-size", "48", "80"]
    argv += ["--cfg-options", f"test_dataloader.dataset.data_root={data_root}"]
    assert load_tool("deploy").main(argv) == 0
    assert "dataset image: " in capsys.readouterr().out


def test_the_tool_prints_the_onnx_verdict_of_the_report(capsys):
    agreement = Agreement(2e-3, 100.0, 2e-5, 0, 0, 100)  # within float32 round-off
    report = DeployReport(Path("c.pth"), Path("c.py"), 0, 0, agreement)
    report.onnx_agreements = [agreement]
    tool = load_tool("deploy")
    for atol, verdict in ((1e-3, "FAILED"), (5e-3, "ok")):
        report.onnx_atol = atol
        tool.print_report(report)
        onnx_line = capsys.readouterr().out.splitlines()[-1]
        assert onnx_line.endswith(verdict) and report.passed == (verdict == "ok")


def test_deploy_accepts_a_fused_checkpoint(tiny, tmp_path, capsys):
    fused = tmp_path / "fused.pth"
    fused_model = reparameterize_model(copy.deepcopy(tiny.model))
    torch.save({"state_dict": fused_model.state_dict()}, fused)
    out = tmp_path / "out"
    assert load_tool("deploy").main([str(tiny.config), str(fused), str(out), "--no-winograd"]) == 0
    assert "random input: max |logit diff|" in capsys.readouterr().out
    deployed = load_segmentor(out / "tiny_deploy.py", out / "tiny_deploy.pth")
    assert compare_logits(logits(tiny.model), logits(deployed)).ok


def test_bf16_deploy_round_trips_through_its_config_and_reports_agreement(tiny, tmp_path, capsys):
    out = tmp_path / "bf16"
    args = [str(tiny.config), str(tiny.checkpoint), str(out), "--bf16", "--random-size", "32", "64"]
    assert load_tool("deploy").main(args) == 0
    printed = capsys.readouterr().out
    # deploy's own criterion: pixels may flip only within the bf16 margin (this untrained
    # model has many near-ties, so the share of changed pixels varies with the CPU's kernels).
    line = (
        r"bf16 vs float32, dataset image: .*\(\d+/2048 changed, 0 beyond the bf16 margin\).*: ok$"
    )
    assert re.search(line, printed, re.MULTILINE), printed
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


def test_a_bug_in_deploy_options_keeps_its_traceback(monkeypatch):
    tool = load_tool("deploy")

    def buggy(**options):
        raise ValueError("an internal defect, not the user's input")

    monkeypatch.setattr(tool, "DeployOptions", buggy)
    with pytest.raises(ValueError, match="internal defect") as raised:
        tool.options_from(tool.parse_args(["config.py", "model.pth", "out"]))
    assert not isinstance(raised.value, UsageError)  # cli would make it one line, exit 2
    monkeypatch.undo()
    with pytest.raises(UsageError, match="opset 16 is too old"):
        tool.options_from(tool.parse_args(["config.py", "model.pth", "out", "--opset", "16"]))
