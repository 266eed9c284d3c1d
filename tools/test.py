"""Tests a segmentor checkpoint and reports mIoU (mmseg 1.x's command line).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out DIR] [--show-dir DIR]
        [--fuse] [--tta] [--cfg-options key=value ...] [--launcher {none,pytorch,slurm}]

``--fuse`` re-parameterizes every RepVGG block (``switch_to_deploy``) after loading, so the
numbers are those of the deployed model. A deployed (fused) checkpoint is recognised by its
keys and loaded into a deployed model without ``--fuse``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import os.path as osp

import torch
from mmengine.config import Config, DictAction
from mmengine.dist import is_main_process
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmseg.models.segmentors import EncoderDecoder

from repvgg_seg.deploy import compare_on_batch, first_dataset_batch
from repvgg_seg.equivalence import FusionMismatchError
from repvgg_seg.reparam import reparameterize_model
from repvgg_seg.runtime import (
    configure_for_cpu,
    init_cpu_distributed,
)

logger = logging.getLogger("tools.test")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Test a segmentor (mmseg 1.x command line).")
    parser.add_argument("config", help="config file")
    parser.add_argument("checkpoint", help="checkpoint file (training-time or fused)")
    parser.add_argument(
        "--work-dir", help="where the metrics log goes (default: work_dirs/<config name>)"
    )
    parser.add_argument("--out", help="directory for the predicted label maps (*.png, train ids)")
    parser.add_argument("--show", action="store_true", help="show predictions in a window")
    parser.add_argument(
        "--show-dir", help="directory for images with the coloured prediction drawn on them"
    )
    parser.add_argument("--wait-time", type=float, default=2, help="--show interval (s)")
    parser.add_argument(
        "--fuse", action="store_true", help="fuse RepVGG blocks (deployed model) before testing"
    )
    parser.add_argument("--tta", action="store_true", help="multi-scale + flip test")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def is_deployed_checkpoint(path: str) -> bool:
    """Whether a checkpoint holds fused RepVGG blocks (``...fused_conv...`` keys)."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    state = state.get("state_dict", state)
    return any(".fused_conv." in key for key in state)


def build_config(args: argparse.Namespace) -> Config:
    """The config with the command-line settings applied."""
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f"Checkpoint '{args.checkpoint}' does not exist.")
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("work_dirs", osp.splitext(osp.basename(args.config))[0])
    # With --fuse, main() loads the checkpoint itself before fusing.
    cfg.load_from = None if args.fuse else args.checkpoint
    # Pretrained ImageNet weights would be overwritten by the checkpoint anyway.
    cfg.model.backbone.pop("init_cfg", None)
    cfg.model.pop("pretrained", None)
    if cfg.model.backbone.get("type") == "RepVGG" and is_deployed_checkpoint(args.checkpoint):
        cfg.model.backbone.deploy = True
    if args.show or args.show_dir:
        hook = cfg.default_hooks.visualization
        hook.draw = True
        # mmseg's hook draws every 50th image by default; a --show-dir should hold them all.
        hook.interval = 1
        hook.show = args.show
        hook.wait_time = args.wait_time
        if args.show_dir:
            cfg.visualizer.save_dir = args.show_dir
    if args.out:
        cfg.test_evaluator.output_dir = args.out
        cfg.test_evaluator.keep_results = True
    if args.tta:
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    configure_for_cpu(cfg)
    return cfg


def fuse_and_check(model: torch.nn.Module, args: argparse.Namespace) -> None:
    """Fuses ``model`` in place and proves on the first test image that nothing changed.

    The comparison runs in float32 with TF32 off whatever the test precision
    (:mod:`repvgg_seg.equivalence`); a broken fusion ends the run before any testing.
    """
    segmentor = model
    while not isinstance(segmentor, EncoderDecoder) and hasattr(segmentor, "module"):
        segmentor = segmentor.module  # DDP and SegTTAModel wrappers
    unfused = copy.deepcopy(segmentor).eval()
    reparameterize_model(model)
    check_cfg = Config.fromfile(args.config)  # the plain test pipeline, also under --tta
    if args.cfg_options:
        check_cfg.merge_from_dict(args.cfg_options)
    agreement = compare_on_batch(unfused, segmentor.eval(), first_dataset_batch(check_cfg))
    del unfused
    logger.info("--fuse check on the first test image: %s", agreement.describe())
    try:
        agreement.check("fused vs unfused segmentor on the first test image")
    except FusionMismatchError as error:
        raise SystemExit(f"ERROR: {error}") from error


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = build_config(args)
    init_cpu_distributed(args.launcher)
    runner = RUNNERS.build(cfg) if "runner_type" in cfg else Runner.from_cfg(cfg)
    if args.fuse:
        # The fusion must see the trained weights.
        runner.load_checkpoint(args.checkpoint, map_location="cpu")
        fuse_and_check(runner.model, args)
    metrics = runner.test()
    if is_main_process():
        for name, value in metrics.items():
            print(f"{name}: {value:.2f}" if isinstance(value, float) else f"{name}: {value}")
    return metrics


if __name__ == "__main__":
    main()
