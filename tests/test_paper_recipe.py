"""The paper-faithful PSPNet family (hszhao/semseg's recipe), --tta, and the paper's numbers.

Every top-level paper config trains 2 iterations and evaluates with sliding windows on
synthetic Cityscapes (tiny crops set through the config, so even B2 runs in seconds); the
heads' parameter shapes equal RepVGG's example_pspnet.py; semseg's transforms pad labels
with the ignore index and images with the mean pixel; tools/test.py --tta runs end to end.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import RUNNERS, init_default_scope
from mmseg.registry import DATASETS, MODELS, TRANSFORMS

from repvgg_seg.datasets import make_synthetic_cityscapes
from repvgg_seg.deploy import deploy_segmentor
from repvgg_seg.pretrain import PretrainConfig
from repvgg_seg.weights.table import WEIGHTS

from helpers import assert_outputs_close, randomize_bn

ROOT = Path(__file__).resolve().parents[1]
PAPER_CONFIGS = [f"pspnet_repvgg_{v}.py" for v in ("b1g2_fast", "b1g2", "b2_fast", "b2")] + [
    "pspnet_r50.py",
    "pspnet_r101.py",
]
MEAN_BGR = (103.53, 116.28, 123.675)
# Tiny stand-ins for 713x713 crops and windows: 8k + 1 pixels like 713, stride ceil(2/3 crop).
# Output stride 8 keeps even B2 and R101-D8 costly per pixel: these sizes keep them at seconds.
TINY_CROP = (33, 33)
TINY_STRIDE = (22, 22)
IMAGE_SIZE = (64, 32)  # width, height of the synthetic images


def load(name: str) -> Config:
    cfg = Config.fromfile(str(ROOT / "configs" / name))
    init_default_scope("mmseg")
    return cfg


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_synthetic_cityscapes(tmp_path_factory.mktemp("data"), 2, 2, IMAGE_SIZE, 0)


@pytest.fixture(scope="module")
def train_root(tmp_path_factory) -> Path:
    """2 training images and 1 validation image: validation is most of a tiny run's time."""
    return make_synthetic_cityscapes(tmp_path_factory.mktemp("train"), 2, 1, IMAGE_SIZE, 0)


# --- the configs say what the paper and semseg say ---------------------------------------------


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_configs_hold_semseg_recipe(name):
    cfg = load(name)
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr, optimizer.momentum) == ("SGD", 0.01, 0.9)
    assert optimizer.weight_decay == 1e-4
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys == {
        "decode_head": {"lr_mult": 10.0},
        "auxiliary_head": {"lr_mult": 10.0},
    }
    (poly,) = cfg.param_scheduler
    assert (poly.type, poly.power, poly.eta_min) == ("PolyLR", 0.9, 0.0)
    # 40 epochs of semseg's 8-GPU loader: ceil(2975 / 8) images per GPU, batches of 2.
    assert cfg.train_cfg.max_iters == poly.end == 40 * (math.ceil(2975 / 8) // 2) == 7440
    assert cfg.train_dataloader.batch_size == 2  # x 8 GPUs = the paper's 16

    steps = [t.type for t in cfg.train_pipeline]
    assert steps == [
        "LoadImageFromFile",
        "LoadAnnotations",
        "RandomResize",
        "RandomRotate",
        "RandomGaussianBlur",
        "RandomFlip",
        "PadAndRandomCrop",
        "PackSegInputs",
    ]
    resize, rotate, blur, flip, crop = cfg.train_pipeline[2:7]
    assert (resize.scale, resize.ratio_range) == ((2048, 1024), (0.5, 2.0))
    assert (rotate.prob, tuple(rotate.degree), rotate.seg_pad_val) == (0.5, (-10, 10), 255)
    assert (blur.prob, blur.kernel_size, flip.prob) == (0.5, 5, 0.5)
    assert tuple(crop.crop_size) == (713, 713) and crop.seg_pad_val == 255
    for pad_val in (rotate.pad_val, crop.pad_val):
        # BGR images, RGB mean in the preprocessor: the padding normalizes to exactly 0.
        assert tuple(pad_val)[::-1] == tuple(cfg.model.data_preprocessor.mean)

    model = cfg.model
    assert model.test_cfg == {"mode": "slide", "crop_size": (713, 713), "stride": (476, 476)}
    assert model.test_cfg.stride[0] == math.ceil(713 * 2 / 3)  # semseg's stride_rate
    head, aux = model.decode_head, model.auxiliary_head
    assert (head.type, head.channels, head.dropout_ratio) == ("SemsegPSPHead", 512, 0.1)
    assert tuple(head.pool_scales) == (1, 2, 3, 6)
    assert (aux.type, aux.channels, aux.num_convs) == ("FCNHead", 256, 1)  # 3x3: FCNHead default
    assert (aux.concat_input, aux.dropout_ratio, aux.loss_decode.loss_weight) == (False, 0.1, 0.4)
    assert head.align_corners and aux.align_corners
    assert head.norm_cfg.type == aux.norm_cfg.type == "SyncBN"
    assert cfg.tta_pipeline[-1].type == "TestTimeAug"


# example_pspnet.py's head (semseg's PPM, cls and aux), parameter and buffer shapes by name.
def example_pspnet_shapes(in_channels: int, aux_channels: int, classes: int = 19) -> dict:
    branch = in_channels // 4
    shapes = {}

    def bn(prefix: str, width: int) -> None:
        for key in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{key}"] = (width,)

    for i in range(4):
        shapes[f"ppm.features.{i}.1.weight"] = (branch, in_channels, 1, 1)
        bn(f"ppm.features.{i}.2", branch)
    shapes["cls.0.weight"] = (512, 2 * in_channels, 3, 3)
    bn("cls.1", 512)
    shapes["cls.4.weight"], shapes["cls.4.bias"] = (classes, 512, 1, 1), (classes,)
    shapes["aux.0.weight"] = (256, aux_channels, 3, 3)
    bn("aux.1", 256)
    shapes["aux.4.weight"], shapes["aux.4.bias"] = (classes, 256, 1, 1), (classes,)
    return shapes


OUR_NAMES_TO_EXAMPLE = [
    (r"^decode_head\.psp_modules\.(\d)\.1\.conv\.", r"ppm.features.\1.1."),
    (r"^decode_head\.psp_modules\.(\d)\.1\.bn\.", r"ppm.features.\1.2."),
    (r"^decode_head\.bottleneck\.conv\.", "cls.0."),
    (r"^decode_head\.bottleneck\.bn\.", "cls.1."),
    (r"^decode_head\.conv_seg\.", "cls.4."),
    (r"^auxiliary_head\.convs\.0\.conv\.", "aux.0."),
    (r"^auxiliary_head\.convs\.0\.bn\.", "aux.1."),
    (r"^auxiliary_head\.conv_seg\.", "aux.4."),
]


def as_example_name(name: str) -> str:
    for pattern, replacement in OUR_NAMES_TO_EXAMPLE:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name)
    raise AssertionError(f"{name} has no counterpart in example_pspnet.py")


@pytest.mark.parametrize(
    "name, in_channels, aux_channels",
    [("pspnet_repvgg_b2.py", 2560, 640), ("pspnet_repvgg_b1g2_fast.py", 2048, 512)],
)
def test_heads_have_example_pspnet_parameter_shapes(name, in_channels, aux_channels):
    cfg = load(name)
    cfg.model.decode_head.norm_cfg = cfg.model.auxiliary_head.norm_cfg = dict(type="BN")
    shapes = {}
    for prefix in ("decode_head", "auxiliary_head"):
        head = MODELS.build(cfg.model[prefix])
        for key, value in head.state_dict().items():
            if not key.endswith("num_batches_tracked"):
                shapes[as_example_name(f"{prefix}.{key}")] = tuple(value.shape)
        assert isinstance(head.dropout, torch.nn.Dropout2d) and head.dropout.p == 0.1
    assert shapes == example_pspnet_shapes(in_channels, aux_channels)


def test_semseg_head_folds_exactly_in_the_deploy_step():
    cfg = load("pspnet_repvgg_b1g2_fast.py")
    # The head is under test: A0 (512b = 1280, 256a = 192) keeps the backbone cheap.
    cfg.model.backbone.update(arch="A0", init_cfg=None)
    cfg.model.decode_head.in_channels, cfg.model.auxiliary_head.in_channels = 1280, 192
    for part in (cfg.model.backbone, cfg.model.decode_head, cfg.model.auxiliary_head):
        part.norm_cfg = dict(type="BN")
    model = randomize_bn(MODELS.build(cfg.model), seed=1).eval()
    inputs = torch.randn(1, 3, *TINY_CROP)
    with torch.no_grad():
        expected = model(inputs, mode="tensor")
        pairs = deploy_segmentor(model, inputs)
        actual = model(inputs, mode="tensor")
    folded = {conv for conv, _ in pairs if conv.startswith("decode_head.")}
    assert folded == {f"decode_head.psp_modules.{i}.1.conv" for i in range(4)} | {
        "decode_head.bottleneck.conv"
    }
    assert_outputs_close(actual, expected)


def test_semseg_head_rejects_uneven_branch_widths():
    with pytest.raises(ValueError, match="in_channels=1000 must be divisible"):
        MODELS.build(
            dict(
                type="SemsegPSPHead",
                in_channels=1000,
                channels=8,
                num_classes=2,
                pool_scales=(1, 3, 6),
            )
        )


# --- semseg's transforms -------------------------------------------------------------------------


def sample(height: int, width: int, value: float = 50.0) -> dict:
    return {
        "img": np.full((height, width, 3), value, np.float32),
        "gt_seg_map": np.ones((height, width), np.uint8),
        "seg_fields": ["gt_seg_map"],
        "img_shape": (height, width),
    }


def test_crop_pads_small_images_evenly_with_mean_and_ignore_index():
    crop = TRANSFORMS.build(dict(type="PadAndRandomCrop", crop_size=(6, 9), pad_val=MEAN_BGR))
    out = crop(sample(3, 4))
    img, labels = out["img"], out["gt_seg_map"]
    assert img.shape == (6, 9, 3) and labels.shape == (6, 9) and out["img_shape"] == (6, 9)
    # 3 rows of padding: 1 above, 2 below; 5 columns: 2 left, 3 right (semseg's split).
    inside = np.zeros((6, 9), bool)
    inside[1:4, 2:6] = True
    assert (labels[inside] == 1).all() and (labels[~inside] == 255).all()
    np.testing.assert_array_equal(img[inside], np.full((12, 3), 50.0, np.float32))
    np.testing.assert_array_equal(img[~inside], np.tile(np.float32(MEAN_BGR), (54 - 12, 1)))


def test_crop_takes_random_windows_of_large_images():
    crop = TRANSFORMS.build(dict(type="PadAndRandomCrop", crop_size=(5, 7)))
    image = np.arange(20 * 30, dtype=np.float32).reshape(20, 30)
    corners = set()
    np.random.seed(0)
    for _ in range(20):
        results = sample(20, 30)
        results["img"] = np.repeat(image[..., None], 3, axis=2)
        results["gt_seg_map"] = (image % 251).astype(np.uint8)
        out = crop(results)
        top, left = divmod(int(out["img"][0, 0, 0]), 30)
        np.testing.assert_array_equal(out["img"][..., 0], image[top : top + 5, left : left + 7])
        np.testing.assert_array_equal(
            out["gt_seg_map"], (image[top : top + 5, left : left + 7] % 251)
        )
        corners.add((top, left))
    assert len(corners) > 10


def test_gaussian_blur_touches_the_image_only():
    rng = np.random.default_rng(0)
    results = sample(16, 16)
    results["img"] = rng.uniform(0, 255, (16, 16, 3)).astype(np.float32)
    image, labels = results["img"].copy(), results["gt_seg_map"].copy()
    out = TRANSFORMS.build(dict(type="RandomGaussianBlur", prob=1.0))(results)
    np.testing.assert_array_equal(out["img"], cv2.GaussianBlur(image, (5, 5), 0))
    assert not np.array_equal(out["img"], image)
    np.testing.assert_array_equal(out["gt_seg_map"], labels)
    results = sample(16, 16)
    results["img"] = image.copy()
    out = TRANSFORMS.build(dict(type="RandomGaussianBlur", prob=0.0))(results)
    np.testing.assert_array_equal(out["img"], image)
    with pytest.raises(ValueError, match="kernel_size must be a positive odd"):
        TRANSFORMS.build(dict(type="RandomGaussianBlur", kernel_size=4))
    with pytest.raises(ValueError, match=r"prob must be in \[0, 1\]"):
        TRANSFORMS.build(dict(type="RandomGaussianBlur", prob=1.5))


def test_config_rotation_pads_labels_with_ignore_and_image_with_mean():
    cfg = load("pspnet_repvgg_b2.py")
    rotate_cfg = next(t for t in cfg.train_pipeline if t.type == "RandomRotate").copy()
    rotate_cfg.update(prob=1.0, degree=(10, 10))  # always, and always by 10 degrees
    out = TRANSFORMS.build(rotate_cfg)(sample(64, 128))
    img, labels = out["img"], out["gt_seg_map"]
    for corner in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
        assert labels[corner] == 255
        np.testing.assert_allclose(img[corner], MEAN_BGR, rtol=1e-6)
    assert labels[32, 64] == 1 and np.allclose(img[32, 64], 50.0)
    assert {int(v) for v in np.unique(labels)} == {1, 255}  # nearest: no mixed label values


def test_paper_pipeline_yields_713_crops_with_valid_labels(data_root):
    cfg = load("pspnet_r50.py")
    dataset_cfg = cfg.train_dataloader.dataset
    dataset_cfg.data_root = str(data_root)
    dataset = DATASETS.build(dataset_cfg)
    data = dataset[0]
    assert tuple(data["inputs"].shape) == (3, 713, 713)
    assert data["inputs"].dtype == torch.float32
    labels = data["data_samples"].gt_sem_seg.data
    assert set(labels.unique().tolist()) <= set(range(19)) | {255}


# --- train, evaluate, --tta ----------------------------------------------------------------------


def tiny_run_config(name: str, data_root: Path, work_dir: Path) -> Config:
    """The config with 33x33 crops and windows on synthetic data, 2 iterations, no
    checkpoints; validation after the last iteration."""
    cfg = load(name)
    cfg.model.backbone.pop("init_cfg", None)
    cfg.model.pop("pretrained", None)
    cfg.model.data_preprocessor.size = TINY_CROP
    cfg.model.test_cfg.update(crop_size=TINY_CROP, stride=TINY_STRIDE)
    for step in cfg.train_dataloader.dataset.pipeline:
        if step.type == "RandomResize":
            step.scale = IMAGE_SIZE
        elif step.type == "PadAndRandomCrop":
            step.crop_size = TINY_CROP
    for step in cfg.val_dataloader.dataset.pipeline:
        if step.type == "Resize":
            step.scale = IMAGE_SIZE
    for loader in ("train_dataloader", "val_dataloader"):
        cfg[loader].update(num_workers=0, persistent_workers=False)
        cfg[loader].dataset.data_root = str(data_root)
    cfg.train_dataloader.batch_size = 2
    cfg.train_cfg.update(max_iters=2, val_interval=100)
    cfg.param_scheduler[0].end = 4  # LRs still > 0 after 2 iterations
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.logger.interval = 1
    cfg.env_cfg.cudnn_benchmark = False
    cfg.work_dir = str(work_dir)
    cfg.launcher = "none"
    cfg.randomness = dict(seed=0)
    return cfg


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_config_trains_and_evaluates_with_sliding_windows(
    name, train_root, tmp_path, monkeypatch
):
    # mmengine formats the whole config with yapf three times per run (about 1 s each here);
    # the unformatted text serves this test as well.
    monkeypatch.setattr(Config, "pretty_text", property(lambda cfg: cfg.text))
    runner = RUNNERS.build(tiny_run_config(name, train_root, tmp_path))
    model = runner.model
    windows = []
    encode_decode = model.encode_decode  # inference only; training uses extract_feat

    def counting_encode_decode(inputs, batch_img_metas):
        windows.append(tuple(inputs.shape[-2:]))
        return encode_decode(inputs, batch_img_metas)

    model.encode_decode = counting_encode_decode
    runner.train()  # validates after the last iteration
    assert 0 <= runner.message_hub.get_scalar("val/mIoU").current() <= 100
    # An image of 32x64: one row of 3 windows (x = 0, 22, 31), 32 rows high.
    assert windows == [(32, 33)] * 3

    # 10x LR on both heads, kept through the poly decay.
    names = {id(p): n for n, p in model.named_parameters()}
    lrs = {}
    for group in runner.optim_wrapper.optimizer.param_groups:
        for param in group["params"]:
            head = names[id(param)].split(".")[0] in ("decode_head", "auxiliary_head")
            assert group["initial_lr"] == pytest.approx(0.1 if head else 0.01), names[id(param)]
            lrs.setdefault(head, set()).add(round(group["lr"], 12))
    (backbone_lr,), (head_lr,) = lrs[False], lrs[True]
    assert 0 < backbone_lr < 0.01 and head_lr == pytest.approx(10 * backbone_lr)


def test_paper_tta_pipeline_makes_12_views(data_root):
    cfg = load("pspnet_repvgg_b1g2.py")
    dataset_cfg = cfg.test_dataloader.dataset
    dataset_cfg.update(data_root=str(data_root), pipeline=cfg.tta_pipeline)
    dataset_cfg.pipeline[1].scale = IMAGE_SIZE
    data = DATASETS.build(dataset_cfg)[0]
    views = [(tuple(x.shape[-2:]), s.flip) for x, s in zip(data["inputs"], data["data_samples"])]
    width, height = IMAGE_SIZE
    sizes = [(round(height * r), round(width * r)) for r in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)]
    assert sorted(views) == sorted((size, flip) for size in sizes for flip in (False, True))


def test_tools_test_tta_runs_end_to_end(data_root, tmp_path):
    config = ROOT / "configs" / "pspnet_repvgg_a0_synthetic.py"
    cfg = load(config.name)
    model = MODELS.build(cfg.model)
    # A model that predicts class 3 everywhere: proves the checkpoint reaches the TTA model.
    with torch.no_grad():
        model.decode_head.conv_seg.weight.zero_()
        model.decode_head.conv_seg.bias.copy_(torch.eye(19)[3] * 10)
    checkpoint = tmp_path / "model.pth"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    out = tmp_path / "predictions"
    result = subprocess.run(
        [sys.executable, "tools/test.py", str(config), str(checkpoint), "--tta"]
        + ["--work-dir", str(tmp_path / "work"), "--out", str(out), "--cfg-options"]
        + [f"test_dataloader.dataset.data_root={data_root}"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"^mIoU: [\d.]+$", result.stdout, re.M), result.stdout[-2000:]
    predictions = sorted(out.glob("*.png"))
    assert len(predictions) == 2
    for path in predictions:
        labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert labels.shape == IMAGE_SIZE[::-1] and (labels == 3).all()


# --- ImageNet side: the paper's recipe per variant and its top-1 figures -----------------------


@pytest.mark.parametrize(
    "model, recipe, epochs",
    [("B3", "heavy", 200), ("RepVGG-B3g2", "heavy", 200), ("b3g4", "heavy", 200)]
    + [("B2", "simple", 120), ("B2g4", "simple", 120), ("A0", "simple", 120)]
    + [("QARepVGG-B0", "qarepvgg", 120), ("qarepvgg_a0", "qarepvgg", 120)],
)
def test_default_recipe_is_the_papers(model, recipe, epochs):
    resolved = PretrainConfig(data_path="unused", model=model).resolved()
    assert (resolved.recipe, resolved.epochs) == (recipe, epochs)


def test_explicit_recipe_wins():
    assert PretrainConfig(data_path="x", model="B3", recipe="simple").resolved().epochs == 120
    assert PretrainConfig(data_path="x", model="B2", recipe="heavy").resolved().epochs == 200


def test_pretrain_tool_prints_the_chosen_recipe(tmp_path, caplog):
    spec = importlib.util.spec_from_file_location(
        "pretrain_tool", ROOT / "tools/pretrain_imagenet.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    caplog.set_level(logging.INFO)
    for args, expected in (
        (["--model", "B3"], "Recipe: heavy (the paper's preset for RepVGG-B3): 200 epochs"),
        (["--model", "B3", "--recipe", "simple"], "Recipe: simple (--recipe): 120 epochs"),
    ):
        with pytest.raises(FileNotFoundError, match="--data-path"):  # run_tool: exit 2
            tool.main(["--data-path", str(tmp_path / "missing"), *args])
        assert expected in caplog.text


def test_weights_table_cites_the_table_of_each_files_recipe():
    figures = {arch: (w.paper_top1, w.paper_epochs) for arch, w in WEIGHTS.items()}
    assert figures["A0"] == (72.41, 120) and figures["B2"] == (78.78, 120)
    assert figures["B2g4"] == (79.38, 200)  # Table 5; its 120-epoch model (78.50) is not published
    assert figures["B3"] == (80.52, 200) and figures["B3g4"] == (80.21, 200)
