"""ImageNet pretraining on a tiny synthetic ImageFolder (4 colour classes, 32x32 images)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from repvgg_seg.atomic_io import TEMPORARY_SUFFIX
from repvgg_seg.errors import UsageError
from repvgg_seg.models import RepVGGClassifier
from repvgg_seg.output_dir import RECORD_NAME
from repvgg_seg.pretrain import (
    PretrainConfig,
    build_optimizer,
    named_parameter_groups,
    run_pretraining,
)
from repvgg_seg.pretrain.data import build_datasets, load_rgb_image
from repvgg_seg.pretrain.output_files import read_metrics
from repvgg_seg.pretrain.recipe import build_lr_scheduler, get_recipe, lr_factor, scaled_lr
from repvgg_seg.pretrain.transforms import (
    Augmentation,
    RandAugmentSpec,
    train_transform,
    val_transform,
)
from repvgg_seg.weights import load_classifier

from helpers import assert_outputs_close, load_tool, one_error_line, tool_exit

REPO = Path(__file__).resolve().parents[1]
CLASS_COLOURS = {
    "red": (200, 40, 40),
    "green": (40, 200, 40),
    "blue": (40, 40, 200),
    "yellow": (200, 200, 40),
}
TRAIN_PER_CLASS, VAL_PER_CLASS = 48, 8
TINY_SIZES = {"train_crop_size": 32, "val_resize_size": 36, "val_crop_size": 32}


def make_image_folder(root: Path, seed: int = 0) -> Path:
    """Colour classes with per-image noise and brightness: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for name, colour in CLASS_COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.array(colour, float) * rng.uniform(0.6, 1.2)
                pixels = pixels + rng.normal(0, 30, (32, 32, 3))
                image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
                image.save(folder / f"{i}.png")
    return root


def tiny_config(data_path: Path, output_dir: Path | None, **overrides) -> PretrainConfig:
    values = dict(
        data_path=str(data_path),
        model="RepVGG-A0",
        batch_size=16,
        workers=0,
        lr=0.4,  # per 256 images: 0.025 at this batch of 16; learns in 3 x 12 steps
        print_freq=2,
        device="cpu",
        output_dir=str(output_dir) if output_dir else None,
        **TINY_SIZES,
    )
    values.update(overrides)
    return PretrainConfig(**values)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("imagenet"))


@pytest.fixture(scope="module")
def three_epoch_run(data_root, tmp_path_factory) -> tuple[Path, dict]:
    output_dir = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    result = run_pretraining(tiny_config(data_root, output_dir, epochs=3))
    return output_dir, result


def test_three_epochs_lower_the_loss_and_beat_chance(three_epoch_run):
    output_dir, result = three_epoch_run
    records = read_metrics(output_dir / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert set(records[0]) >= {"epoch", "train_loss", "lr", "acc1", "acc5"}
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    chance = 100 / len(CLASS_COLOURS)
    assert records[-1]["acc1"] > chance, records
    assert result["best_acc1"] == max(r["acc1"] for r in records)
    # Cosine annealing: the LR falls every epoch.
    lrs = [r["lr"] for r in records]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] < 0.1


def test_checkpoints_are_complete_and_load_weights_only(three_epoch_run):
    output_dir, _ = three_epoch_run
    last = load(output_dir / "checkpoint.pth")
    assert {"model", "optimizer", "lr_scheduler", "epoch", "scaler", "args"} <= set(last)
    assert last["epoch"] == 2 and "model_ema" not in last
    assert json.loads(json.dumps(last["args"])) == last["args"]
    assert last["args"]["model"] == "A0" and last["args"]["global_batch_size"] == 16
    best = load(output_dir / "model_best.pth")
    assert best["best_acc1"] == last["best_acc1"]
    # write_atomically's temporary files are hidden (".checkpoint.pth.<random>.part"); the
    # one hidden file left is the folder's record of what the run wrote.
    assert [p.name for p in output_dir.iterdir() if p.name.startswith(".")] == [RECORD_NAME]


def test_deployed_classifier_matches_unfused_accuracy(three_epoch_run, data_root):
    output_dir, result = three_epoch_run
    fused = result["fused"]
    assert fused["acc1_fused"] == fused["acc1"] == result["last"]["acc1"]
    assert fused["max_logit_diff"] < 1e-3
    deployed = load(output_dir / "model_deploy.pth")
    assert deployed["deploy"] is True and deployed["arch"] == "A0"
    assert any(".fused_conv." in k for k in deployed["model"])
    assert not any(".branch_3x3." in k for k in deployed["model"])
    # --test-only on the deployed file reproduces the same accuracy.
    metrics = run_pretraining(
        tiny_config(data_root, None, test_only=True, resume=str(output_dir / "model_deploy.pth"))
    )
    assert metrics["acc1"] == fused["acc1"]


def test_checkpoint_initializes_mmseg_backbone(three_epoch_run):
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    import repvgg_seg  # noqa: F401  (registers RepVGG)

    register_all_modules(init_default_scope=False)
    output_dir, _ = three_epoch_run
    checkpoint = output_dir / "checkpoint.pth"
    segmentor = MODELS.build(
        dict(
            type="mmseg.EncoderDecoder",
            backbone=dict(
                type="RepVGG",
                arch="A0",
                dilation_mode="dilated",
                init_cfg=dict(type="Pretrained", checkpoint=str(checkpoint)),
            ),
            decode_head=dict(
                type="mmseg.FCNHead",
                in_channels=1280,
                channels=8,
                num_convs=1,
                num_classes=3,
                in_index=3,
            ),
        )
    )
    segmentor.init_weights()
    saved = load(checkpoint)["model"]
    backbone_state = segmentor.backbone.state_dict()
    expected = {k[len("backbone.") :]: v for k, v in saved.items() if k.startswith("backbone.")}
    assert set(backbone_state) == set(expected)
    for key, value in backbone_state.items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)


def test_resume_after_one_epoch_equals_uninterrupted_run(data_root, tmp_path):
    # The heavy recipe exercises every piece of resumable state: warmup, mixup,
    # AutoAugment, label smoothing and the EMA.
    common = dict(recipe="heavy", epochs=2, lr_warmup_epochs=1, model_ema=True, model_ema_steps=1)
    whole = tmp_path / "whole"
    run_pretraining(tiny_config(data_root, whole, **common))
    split = tmp_path / "split"
    run_pretraining(tiny_config(data_root, split, stop_after_epoch=1, **common))
    assert load(split / "checkpoint.pth")["epoch"] == 0
    assert not (split / "model_deploy.pth").exists()
    # A write killed mid-way left its temporary file, named with the marker that the killed
    # run recorded in its lock (output_dir's rule); the resumed run removes it.
    killed = {"pid": 2**22 + 1, "host": "h", "started": "t", "marker": "0badc0de"}
    (split / ".pretrain.lock").write_text(json.dumps(killed))
    stale = split / f".checkpoint.pth.0badc0de.k1ll3d_x{TEMPORARY_SUFFIX}"
    stale.write_bytes(b"\0" * 64)
    # Different global RNG state before resuming must not matter.
    torch.manual_seed(12345)
    run_pretraining(tiny_config(data_root, split, resume=str(split / "checkpoint.pth"), **common))
    assert not stale.exists()

    expected, actual = load(whole / "checkpoint.pth"), load(split / "checkpoint.pth")
    assert actual["epoch"] == expected["epoch"] == 1
    for key in ("model", "model_ema"):
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0)
    torch.testing.assert_close(actual["optimizer"], expected["optimizer"], rtol=0, atol=0)
    assert actual["lr_scheduler"] == expected["lr_scheduler"]
    assert without_timing(split / "metrics.jsonl") == without_timing(whole / "metrics.jsonl")


def without_timing(metrics_path: Path) -> list[dict]:
    timing = {"images_per_second", "epoch_seconds"}
    return [{k: v for k, v in r.items() if k not in timing} for r in read_metrics(metrics_path)]


def test_two_process_torchrun_completes_and_writes_one_checkpoint(data_root, tmp_path):
    output_dir = tmp_path / "ddp"
    command = [
        str(Path(sys.executable).with_name("torchrun")),
        "--standalone",
        "--nproc_per_node",
        "2",
        str(REPO / "tools" / "pretrain_imagenet.py"),
        "--data-path",
        str(data_root),
        "--model",
        "A0",
        "--epochs",
        "1",
        "-b",
        "8",
        "-j",
        "0",
        "--device",
        "cpu",
        "--output-dir",
        str(output_dir),
        *(f"--{k.replace('_', '-')}={v}" for k, v in TINY_SIZES.items()),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    checkpoint = load(output_dir / "checkpoint.pth")
    assert checkpoint["epoch"] == 0
    assert checkpoint["args"]["world_size"] == 2
    assert checkpoint["args"]["global_batch_size"] == 16
    assert checkpoint["args"]["scaled_lr"] == pytest.approx(0.1 * 16 / 256)
    assert len(read_metrics(output_dir / "metrics.jsonl")) == 1
    written = sorted(p.name for p in output_dir.iterdir())
    files = ["checkpoint.pth", "metrics.jsonl", "model_best.pth", "model_deploy.pth"]
    assert written == [".repvgg_seg-written", *files]  # and the record of what it wrote
    # Only rank 0 logs at INFO; the other rank stays quiet.
    assert "[rank 0] INFO" in done.stderr and "[rank 1] INFO" not in done.stderr


# --- recipe ---------------------------------------------------------------------------------


@pytest.mark.parametrize("deploy", [False, True])
def test_weight_decay_applies_exactly_to_conv_and_fc_kernels(deploy):
    model = RepVGGClassifier("A0", num_classes=4, deploy=deploy)
    decayed, not_decayed = named_parameter_groups(model)
    names = [name for name, _ in model.named_parameters()]
    kernels = {n for n in names if n.endswith("conv.weight") or n == "fc.weight"}
    assert {n for n, _ in decayed} == kernels
    assert {n for n, _ in not_decayed} == set(names) - kernels
    assert "fc.bias" in {n for n, _ in not_decayed}
    if not deploy:
        assert any(n.endswith("bn.weight") for n, _ in not_decayed)
        assert any(n.endswith("branch_identity.bias") for n, _ in not_decayed)
    else:
        assert any(n.endswith("fused_conv.bias") for n, _ in not_decayed)

    optimizer = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=1e-4)
    by_id = {id(p): n for n, p in model.named_parameters()}
    groups = {
        g["weight_decay"]: {by_id[id(p)] for p in g["params"]} for g in optimizer.param_groups
    }
    assert groups == {1e-4: kernels, 0.0: set(names) - kernels}
    assert all(g["momentum"] == 0.9 for g in optimizer.param_groups)


def test_recipes_fill_unset_options_and_flags_override_them(data_root):
    simple = tiny_config(data_root, None, lr=None).resolved()
    assert (simple.epochs, simple.lr, simple.wd, simple.momentum) == (120, 0.1, 1e-4, 0.9)
    assert (simple.label_smoothing, simple.mixup_alpha, simple.auto_augment) == (0.0, 0.0, "none")
    assert simple.lr_warmup_epochs == 0 and simple.model == "A0"
    heavy = tiny_config(data_root, None, recipe="heavy", model="b2", epochs=30).resolved()
    assert heavy.epochs == 30 and heavy.model == "B2"
    assert (heavy.lr_warmup_epochs, heavy.label_smoothing, heavy.auto_augment) == (
        5,
        0.1,
        "imagenet",
    )
    assert heavy.mixup_alpha > 0
    assert tiny_config(data_root, None, recipe="heavy", lr=None).resolved().lr == 0.1
    with pytest.raises(ValueError, match=r"--lr-warmup-epochs \(5\) must be smaller"):
        tiny_config(data_root, None, recipe="heavy", epochs=3).resolved()


def test_lr_scales_linearly_and_follows_warmup_then_cosine():
    assert scaled_lr(0.1, 256) == pytest.approx(0.1)
    assert scaled_lr(0.1, 1024) == pytest.approx(0.4)
    total, warmup = 100, 10
    factors = [lr_factor(s, total, warmup) for s in range(total)]
    assert factors[0] == pytest.approx(0.1) and factors[warmup - 1] == pytest.approx(1.0)
    assert factors[warmup] == pytest.approx(1.0)
    assert factors[55] == pytest.approx(0.5)
    assert all(a > b for a, b in zip(factors[warmup:], factors[warmup + 1 :]))
    assert 0 < factors[-1] < 1e-2


# --- bad input --------------------------------------------------------------------------------


def test_unknown_model_lists_valid_variants(data_root):
    with pytest.raises(ValueError, match=r"RepVGG-Z9.*A0, A1.*B1g2"):
        tiny_config(data_root, None, model="RepVGG-Z9").resolved()


def test_missing_split_is_named(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "a" / "0.png")
    with pytest.raises(FileNotFoundError, match=r"val.*does not exist.*train/ and val/"):
        build_datasets(tmp_path, 32, 36, 32)


def test_empty_class_folder_is_named(tmp_path):
    root = make_image_folder(tmp_path / "data")
    (root / "train" / "purple").mkdir()
    with pytest.raises(FileNotFoundError, match=r"without images.*purple"):
        build_datasets(root, 32, 36, 32)


def test_train_and_val_classes_must_agree(tmp_path):
    root = make_image_folder(tmp_path / "data")
    (root / "val" / "red").rename(root / "val" / "crimson")
    with pytest.raises(ValueError, match=r"only in train: \['red'\], only in val: \['crimson'\]"):
        build_datasets(root, 32, 36, 32)


def test_unreadable_image_is_named(tmp_path):
    root = make_image_folder(tmp_path / "data")
    broken = root / "train" / "red" / "0.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"Cannot read image .*red/0\.png"):
        load_rgb_image(str(broken))
    splits = build_datasets(root, 32, 36, 32)
    index = splits.train.samples.index((str(broken), splits.train.class_to_idx["red"]))
    with pytest.raises(ValueError, match="Replace the file"):
        splits.train[index]


def test_cli_reports_bad_model_and_exits(data_root, capsys):
    argv = ["--data-path", str(data_root), "--model", "C7"]
    status, err = tool_exit("pretrain_imagenet", argv, capsys)
    message = one_error_line(err, "pretrain_imagenet")
    assert status == 2 and "Unknown RepVGG variant 'C7'" in message and "B3g4" in message


@pytest.mark.parametrize("workers", [1, 8])
def test_unreadable_image_read_by_a_worker_is_one_line(tmp_path, capsys, workers):
    root = make_image_folder(tmp_path / "data")
    broken = root / "train" / "green" / "3.png"
    broken.write_bytes(b"not a png")
    argv = ["--data-path", str(root), "--model", "A0", "--epochs", "1", "-b", "16"]
    argv += ["-j", str(workers), "--device", "cpu"]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in TINY_SIZES.items()]
    status, err = tool_exit("pretrain_imagenet", argv, capsys)
    message = one_error_line(err, "pretrain_imagenet")
    assert status == 2 and message.startswith(f"Cannot read image {broken}:")
    assert "Traceback" not in message and "worker" not in message


# --- QARepVGG -----------------------------------------------------------------------------------


def test_qarepvgg_a0_trains_resumes_exactly_and_deploys_repvggs_network(data_root, tmp_path):
    common = dict(model="QARepVGG-A0", epochs=2)
    whole = tmp_path / "whole"
    result = run_pretraining(tiny_config(data_root, whole, **common))
    split = tmp_path / "split"
    run_pretraining(tiny_config(data_root, split, stop_after_epoch=1, **common))
    torch.manual_seed(12345)
    run_pretraining(tiny_config(data_root, split, resume=str(split / "checkpoint.pth"), **common))

    expected, actual = load(whole / "checkpoint.pth"), load(split / "checkpoint.pth")
    args = expected["args"]
    assert (args["model"], args["recipe"], args["wd"]) == ("QARepVGG-A0", "qarepvgg", 4e-5)
    assert "stem.bn.weight" in {k.removeprefix("backbone.") for k in expected["model"]}
    for key in ("model", "optimizer"):
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0)
    assert without_timing(split / "metrics.jsonl") == without_timing(whole / "metrics.jsonl")
    # The deployed file was written only after passing the fusion criterion; it is the
    # deployed RepVGG-A0 classifier, key for key.
    fused = result["fused"]
    assert fused["acc1_fused"] == fused["acc1"] and fused["max_logit_diff"] < 1e-3
    deployed = load(whole / "model_deploy.pth")
    assert deployed["arch"] == "QARepVGG-A0"
    RepVGGClassifier("A0", num_classes=4, deploy=True).load_state_dict(deployed["model"])
    # Both files load back whole (head included) as what they are.
    fused, trained = (
        load_classifier(whole / name) for name in ("model_deploy.pth", "checkpoint.pth")
    )
    assert fused.backbone.deploy and not trained.backbone.deploy
    assert trained.backbone.block_type == "QARepVGG"
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert_outputs_close(fused(images), trained(images))


def test_qarepvgg_recipe_is_the_authors(data_root):
    # train_QAV2_B0.sh, main.py, datasets.py and B0_log.txt (recipe.py cites each).
    cfg = tiny_config(data_root, None, model="qarepvgg_b0", lr=None).resolved()
    assert (cfg.model, cfg.recipe, cfg.model_label) == ("QARepVGG-B0", "qarepvgg", "QARepVGG-B0")
    assert (cfg.epochs, cfg.lr, cfg.momentum, cfg.wd, cfg.lr_warmup_epochs) == (
        120,
        0.1,
        0.9,
        4e-5,
        0,
    )
    assert not cfg.decay_norm_and_bias and not cfg.model_ema and cfg.lr_1x1_scale == 1.0
    assert (cfg.label_smoothing, cfg.mixup_alpha) == (0.0, 0.0)
    assert (cfg.auto_augment, cfg.interpolation) == ("rand-m9-mstd0.5-inc1", "bicubic")
    assert (cfg.color_jitter, cfg.random_erasing) == (0.4, 0.25)
    recipe = get_recipe("qarepvgg")
    # 0.2 x 1024 / 512 in main.py: 0.4 at their global batch, as their log starts.
    assert recipe.global_batch_size == 1024
    assert scaled_lr(cfg.lr, recipe.global_batch_size) == pytest.approx(0.4)
    # --recipe still picks any preset for any model.
    simple = tiny_config(data_root, None, model="QARepVGG-A0", recipe="simple").resolved()
    assert (simple.wd, simple.auto_augment, simple.interpolation) == (1e-4, "none", "bilinear")


def test_qarepvgg_a0_decays_conv_and_fc_kernels_only():
    model = RepVGGClassifier("A0", num_classes=10, block_type="QARepVGG")
    decayed, not_decayed = ({name for name, _ in group} for group in named_parameter_groups(model))
    # Kernels: each block's 3x3 conv and bare 1x1 conv, and the FC weight.
    kinds = {name.rsplit(".", 2)[-2] + "." + name.rsplit(".", 1)[-1] for name in decayed}
    assert kinds == {"conv.weight", "branch_1x1.weight", "fc.weight"}
    assert sum(name.endswith("branch_1x1.weight") for name in decayed) == 22  # A0: 22 layers
    # timm's create_optimizer (main.py, --tag qa): 1-D parameters and biases undecayed.
    params = dict(model.named_parameters())
    timm_rule = {n for n, p in params.items() if p.ndim <= 1 or n.endswith(".bias")}
    # train.py: sgd_optimizer: no decay for any key with 'bias' or 'bn'.
    sgd_optimizer_rule = {n for n in params if "bias" in n or "bn" in n}
    assert not_decayed == timm_rule == sgd_optimizer_rule
    assert decayed == set(params) - not_decayed
    assert "fc.bias" in not_decayed and "backbone.stem.bn.weight" in not_decayed

    optimizer = build_optimizer(model, 0.4, 0.9, 4e-5)
    by_id = {id(p): n for n, p in params.items()}
    groups = [
        ({by_id[id(p)] for p in g["params"]}, g["weight_decay"]) for g in optimizer.param_groups
    ]
    assert groups == [(decayed, 4e-5), (not_decayed, 0.0)]


def test_lr_1x1_scale_slows_only_qarepvggs_bare_1x1_kernels():
    model = RepVGGClassifier("A0", num_classes=10, block_type="QARepVGG")
    optimizer = build_optimizer(model, 0.4, 0.9, 4e-5, lr_1x1_scale=0.1)
    by_id = {id(p): n for n, p in model.named_parameters()}
    main, _, slow = optimizer.param_groups
    assert main["lr"] == 0.4 and slow["lr"] == pytest.approx(0.04)
    assert slow["weight_decay"] == 4e-5
    slow_names = {by_id[id(p)] for p in slow["params"]}
    assert len(slow_names) == 22 and all(n.endswith("branch_1x1.weight") for n in slow_names)
    assert not slow_names & {by_id[id(p)] for p in main["params"]}
    # The schedule scales every group alike: the ratio holds at every step.
    scheduler = build_lr_scheduler(optimizer, epochs=2, steps_per_epoch=5, warmup_epochs=0)
    for _ in range(7):
        scheduler.step()
    assert slow["lr"] == pytest.approx(0.1 * main["lr"]) and main["lr"] < 0.4
    # RepVGG's 1x1 branches have their own BN: nothing to slow down, two groups.
    assert (
        len(build_optimizer(RepVGGClassifier("A0"), 0.4, 0.9, 4e-5, lr_1x1_scale=0.1).param_groups)
        == 2
    )
    with pytest.raises(UsageError, match="lr-1x1-scale must be >= 0"):
        build_optimizer(model, 0.4, 0.9, 4e-5, lr_1x1_scale=-1)


def test_qarepvgg_transforms_are_the_authors_in_torchvision():
    cfg = PretrainConfig(data_path="unused", model="QARepVGG-A0").resolved()
    steps = train_transform(224, cfg.augmentation).transforms
    assert [type(t).__name__ for t in steps] == [
        "RandomResizedCrop",
        "RandomHorizontalFlip",
        "RandAugment",
        "ToTensor",
        "Normalize",
        "RandomErasing",
    ]
    crop, flip, rand_augment, _, normalize, erasing = steps
    bicubic = InterpolationMode.BICUBIC
    assert (crop.size, crop.scale, crop.interpolation) == ((224, 224), (0.08, 1.0), bicubic)
    assert flip.p == 0.5
    # timm's m9 of 10 = torchvision's magnitude 9 of 11 bins; two ops; borders filled with
    # the mean pixel, as timm does.
    assert (rand_augment.num_ops, rand_augment.magnitude) == (2, 9)
    assert (rand_augment.num_magnitude_bins, rand_augment.interpolation) == (11, bicubic)
    assert rand_augment.fill == [124, 116, 104]
    assert tuple(normalize.mean) == (0.485, 0.456, 0.406)
    # timm's --reprob 0.25 --remode pixel: per-pixel normal noise in normalized space.
    assert (erasing.p, erasing.value, erasing.scale) == (0.25, "random", (0.02, 0.33))
    # Colour jitter 0.4 is set, but timm applies it only without an auto-augment policy.
    assert cfg.color_jitter == 0.4 and not any(isinstance(t, transforms.ColorJitter) for t in steps)
    jitter = train_transform(224, Augmentation(color_jitter=0.4)).transforms[2]
    assert isinstance(jitter, transforms.ColorJitter) and jitter.brightness == (0.6, 1.4)

    evaluation = val_transform(256, 224, cfg.interpolation).transforms
    assert [type(t).__name__ for t in evaluation] == [
        "Resize",
        "CenterCrop",
        "ToTensor",
        "Normalize",
    ]
    assert (evaluation[0].size, evaluation[0].interpolation) == (256, bicubic)
    assert evaluation[1].size == (224, 224)

    torch.manual_seed(0)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8))
    outputs = [train_transform(32, cfg.augmentation)(image) for _ in range(8)]
    assert all(o.shape == (3, 32, 32) for o in outputs)
    assert not all(torch.equal(outputs[0], o) for o in outputs[1:])


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("rand-m9-mstd0.5-inc1", RandAugmentSpec(9, 2, 0.5, True)),
        ("rand-m7-n3", RandAugmentSpec(7, 3, 0.0, False)),
    ],
)
def test_rand_augment_spec_reads_timms_syntax(spec, expected):
    assert RandAugmentSpec.parse(spec) == expected


@pytest.mark.parametrize(
    "spec, message",
    [
        ("rand-m9.5", "integer magnitude m0..m10"),
        ("rand-n2", "integer magnitude"),
        ("rand-m9-mmax12", "Cannot read --auto-augment 'rand-m9-mmax12'"),
        ("random", "Cannot read"),
        ("cifar100", "Unknown --auto-augment policy 'cifar100'"),
    ],
)
def test_bad_auto_augment_is_one_usage_error(spec, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        PretrainConfig(data_path="unused", auto_augment=spec).resolved()


def test_bad_augmentation_values_are_named():
    with pytest.raises(UsageError, match=r"--random-erase must be in \[0, 1\], got 1.5"):
        PretrainConfig(data_path="unused", random_erasing=1.5).resolved()
    with pytest.raises(UsageError, match="Unknown --interpolation 'nearest'"):
        PretrainConfig(data_path="unused", interpolation="nearest").resolved()


def test_cli_overrides_the_augmentation_and_names_a_bad_value(data_root, capsys):
    argv = ["--data-path", str(data_root), "--model", "QARepVGG-A0", "--random-erase", "2"]
    status, err = tool_exit("pretrain_imagenet", argv, capsys)
    assert status == 2
    assert one_error_line(err, "pretrain_imagenet") == "--random-erase must be in [0, 1], got 2.0."
    args = load_tool("pretrain_imagenet").parse_args(
        ["--data-path", "x", "--interpolation", "bilinear", "--lr-1x1-scale", "0.1"]
    )
    resolved = PretrainConfig(**vars(args)).resolved()
    assert (resolved.interpolation, resolved.lr_1x1_scale) == ("bilinear", 0.1)
