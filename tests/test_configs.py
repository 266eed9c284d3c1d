"""Every config in configs/ and configs/mmseg_style/ builds: its model (and a forward pass)
and its datasets. The paper-faithful family's recipe is tested in test_paper_recipe.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS, MODELS

from repvgg_seg.datasets import make_synthetic_cityscapes

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(
    str(p.relative_to(ROOT / "configs"))
    for p in [*(ROOT / "configs").glob("*.py"), *(ROOT / "configs" / "mmseg_style").glob("*.py")]
)
REPVGG_CONFIGS = [name for name in CONFIGS if Path(name).name.startswith("pspnet_repvgg")]
CITYSCAPES_CONFIGS = [name for name in CONFIGS if "synthetic" not in name]
MMSEG_STYLE_CONFIGS = [name for name in CONFIGS if name.startswith("mmseg_style/")]
CROPS = ("RandomCrop", "PadAndRandomCrop")


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return make_synthetic_cityscapes(tmp_path_factory.mktemp("synthetic"), 2, 2, (128, 64), 0)


def load(name: str) -> Config:
    cfg = Config.fromfile(str(ROOT / "configs" / name))
    init_default_scope("mmseg")
    return cfg


def test_every_expected_config_exists():
    paper = {f"pspnet_repvgg_{v}.py" for v in ("b2", "b2_fast", "b1g2", "b1g2_fast")}
    paper |= {"pspnet_r50.py", "pspnet_r101.py"}
    mmseg_style = {f"mmseg_style/{name}" for name in paper}
    mmseg_style |= {"mmseg_style/pspnet_repvgg_a0.py", "mmseg_style/pspnet_repvgg_a0_fast.py"}
    assert paper | mmseg_style | {"pspnet_repvgg_a0_synthetic.py"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_model_builds_and_runs(name):
    cfg = load(name)
    # No ImageNet download here: the weights issue tests the 'repvgg:<arch>' names.
    cfg.model.backbone.pop("init_cfg", None)
    cfg.model.pop("pretrained", None)
    model = MODELS.build(cfg.model).eval()
    # mmseg's ResNet has no out_channels property; its bottleneck stages are 256 * 2**i wide.
    backbone_channels = getattr(model.backbone, "out_channels", [256 * 2**i for i in range(4)])
    for head in (model.decode_head, model.auxiliary_head):
        assert head.in_channels == backbone_channels[head.in_index], name
    with torch.no_grad():
        logits = model(torch.rand(1, 3, 64, 64), mode="tensor")
    assert logits.shape == (1, 19, 8, 8)  # PSPNet predicts at output stride 8


@pytest.mark.parametrize("name", CONFIGS)
def test_datasets_build(name, synthetic_root):
    cfg = load(name)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        dataset_cfg = cfg[loader].dataset
        dataset_cfg.data_root = str(synthetic_root)
        dataset = DATASETS.build(dataset_cfg)
        assert type(dataset).__name__ == "CheckedCityscapesDataset"
        assert len(dataset) == 2
        labels = dataset[0]["data_samples"].gt_sem_seg.data
        if loader == "train_dataloader":
            crop = next(t for t in dataset_cfg.pipeline if t.type in CROPS)
            assert labels.shape[-2:] == tuple(crop.crop_size)
        else:  # metrics are computed at the labels' own size
            assert labels.shape[-2:] == (64, 128)


@pytest.mark.parametrize("name", REPVGG_CONFIGS)
def test_repvgg_configs_load_imagenet_weights_of_their_variant(name):
    cfg = load(name)
    assert "repvgg_seg" in cfg.custom_imports.imports
    backbone = cfg.model.backbone
    if "synthetic" in name:
        assert backbone.init_cfg is None and backbone.norm_cfg.type == "BN"
        return
    assert backbone.init_cfg == {"type": "Pretrained", "checkpoint": f"repvgg:{backbone.arch}"}
    assert backbone.dilation_mode == ("fast" if name.endswith("_fast.py") else "dilated")
    assert cfg.model.decode_head.type == (
        "PSPHead" if name.startswith("mmseg_style/") else "SemsegPSPHead"
    )
    assert cfg.model.decode_head.norm_cfg.type == "SyncBN"


@pytest.mark.parametrize("name", CITYSCAPES_CONFIGS)
def test_paper_schedule_in_both_families(name):
    cfg = load(name)
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr, optimizer.momentum) == ("SGD", 0.01, 0.9)
    assert optimizer.weight_decay == 1e-4
    (poly,) = cfg.param_scheduler
    assert (poly.type, poly.power, poly.end) == ("PolyLR", 0.9, cfg.train_cfg.max_iters)
    # 40 epochs of 2975 images at a global batch of 16 (8 GPUs x 2).
    epochs = cfg.train_cfg.max_iters * 8 * cfg.train_dataloader.batch_size / 2975
    assert epochs == pytest.approx(40, abs=0.05)
    assert cfg.default_hooks.checkpoint.save_best == "mIoU"
    assert cfg.val_evaluator.type == "IoUMetric"
    resize = next(t for t in cfg.test_pipeline if t.type == "Resize")
    assert resize.scale == (2048, 1024)


@pytest.mark.parametrize("name", MMSEG_STYLE_CONFIGS)
def test_mmseg_style_pipeline(name):
    cfg = load(name)
    crop = next(t for t in cfg.train_pipeline if t.type == "RandomCrop")
    assert (crop.crop_size, crop.cat_max_ratio) == ((512, 1024), 0.75)
    assert "PhotoMetricDistortion" in [t.type for t in cfg.train_pipeline]
    assert cfg.model.test_cfg.mode == "whole"
    assert "paramwise_cfg" not in cfg.optim_wrapper


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_has_a_tta_pipeline(name):
    cfg = load(name)
    assert cfg.tta_model.type == "SegTTAModel"
    *_, tta = cfg.tta_pipeline
    resizes, flips, *_ = tta.transforms
    assert [t.scale_factor for t in resizes] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert sorted(t.prob for t in flips) == [0.0, 1.0]


QAREPVGG_CONFIGS = ["pspnet_qarepvgg_b1g2_fast.py", "pspnet_qarepvgg_b2_fast.py"]


@pytest.mark.parametrize("name", QAREPVGG_CONFIGS)
def test_qarepvgg_configs_are_the_paper_recipe_with_qarepvgg_blocks(name):
    cfg, repvgg = load(name), load(name.replace("qarepvgg", "repvgg"))
    assert name in CONFIGS
    backbone = cfg.model.backbone
    assert backbone.block_type == "QARepVGG" and backbone.dilation_mode == "fast"
    assert backbone.init_cfg.type == "Pretrained"
    run = Path(name).stem.removeprefix("pspnet_").removesuffix("_fast")
    assert backbone.init_cfg.checkpoint == f"work_dirs/pretrain_{run}/model_best.pth"
    # Everything else is the RepVGG config's: the block is the only difference.
    for config in (cfg, repvgg):
        config.model.backbone.pop("block_type", None)
        config.model.backbone.pop("init_cfg")
    for key in ("model", "optim_wrapper", "param_scheduler", "train_cfg", "train_dataloader"):
        assert cfg[key] == repvgg[key], key


def test_qarepvgg_config_loads_a_pretraining_checkpoint(tmp_path):
    from repvgg_seg.models import RepVGGClassifier

    cfg = load("pspnet_qarepvgg_b1g2_fast.py")
    torch.manual_seed(0)
    classifier = RepVGGClassifier("B1g2", num_classes=4, block_type="QARepVGG")
    torch.save({"model": classifier.state_dict()}, tmp_path / "model_best.pth")
    cfg.model.backbone.init_cfg.checkpoint = str(tmp_path / "model_best.pth")
    backbone = MODELS.build(cfg.model.backbone)
    backbone.init_weights()
    saved = classifier.state_dict()
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(value, saved[f"backbone.{key}"], rtol=0, atol=0, msg=key)
