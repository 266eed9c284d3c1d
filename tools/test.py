"""Tests a segmentor checkpoint and reports mIoU (mmseg 1.x's command line).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out DIR] [--show-dir DIR]
        [--fuse] [--tta] [--cfg-options key=value ...] [--launcher {none,pytorch,slurm}]

``--fuse`` re-parameterizes every RepVGG block (``switch_to_deploy``) after loading, so the
numbers are those of the deployed model. A deployed (fused) checkpoint is recognised by its
keys and loaded into a deployed model without ``--fuse``.

The checkpoint is read by :func:`repvgg_seg.checkpoint.read_checkpoint` and loaded strictly:
a checkpoint of another variant, a deployed checkpoint with a training-time config (or the
reverse), and missing or unexpected keys end the run with one line naming the checkpoint
and the config, before anything is tested.
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
from mmseg.models.segmentors import BaseSegmentor

from repvgg_seg.checkpoint import (
    CheckpointError,
    describe_key_mismatch,
    is_deployed_state_dict,
    read_checkpoint,
    state_dict_of,
)
from repvgg_seg.deploy import compare_on_batch, first_dataset_batch
from repvgg_seg.equivalence import FusionMismatchError
from repvgg_seg.models import RepVGG
from repvgg_seg.reparam import reparameterize_model
from repvgg_seg.runtime import (
    configure_for_cpu,
    init_cpu_distributed,
)
from repvgg_seg.weights import check_backbone_structure

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


def read_weights(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """The checkpoint and its model weights; exits with one line naming the file if unusable."""
    try:
        checkpoint = read_checkpoint(path)
        state = dict(state_dict_of(checkpoint, path))
    except CheckpointError as error:
        raise SystemExit(f"ERROR: {error}") from None
    if state and all(key.startswith("module.") for key in state):  # saved from a DDP wrapper
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return checkpoint, state


def build_config(args: argparse.Namespace, state: dict[str, torch.Tensor]) -> Config:
    """The config with the command-line settings applied, for the weights ``state``."""
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("work_dirs", osp.splitext(osp.basename(args.config))[0])
    # main() loads the weights itself, strictly (mmengine's load_from is not strict).
    cfg.load_from = None
    # Pretrained ImageNet weights would be overwritten by the checkpoint anyway.
    cfg.model.backbone.pop("init_cfg", None)
    cfg.model.pop("pretrained", None)
    if str(cfg.model.backbone.get("type")).split(".")[-1] == "RepVGG":
        set_backbone_deploy(cfg, state, args)
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


def set_backbone_deploy(cfg: Config, state: dict[str, torch.Tensor], args: argparse.Namespace):
    """Builds the RepVGG backbone fused when the checkpoint's blocks are fused.

    A training-time checkpoint for a config that builds a deployed backbone is an error.
    """
    try:
        deployed = is_deployed_state_dict(state, f"Checkpoint {args.checkpoint!r}")
    except CheckpointError as error:
        raise SystemExit(f"ERROR: {error}") from None
    if deployed:
        cfg.model.backbone.deploy = True
    elif deployed is False and cfg.model.backbone.get("deploy"):
        raise SystemExit(
            f"ERROR: Checkpoint {args.checkpoint!r} holds training-time RepVGG blocks, but "
            f"config {args.config!r} builds a deployed model (backbone deploy=True). Test it "
            "with the config it was trained with (add --fuse for the fused model's numbers), "
            "or deploy it first with tools/deploy.py."
        )


def unwrap_segmentor(model: torch.nn.Module) -> torch.nn.Module:
    """The segmentor inside DDP and SegTTAModel wrappers."""
    while not isinstance(model, BaseSegmentor) and hasattr(model, "module"):
        model = model.module
    return model


def load_weights(runner: Runner, checkpoint: dict, state: dict, args: argparse.Namespace):
    """Loads ``state`` into the runner's segmentor strictly, or exits naming both sides."""
    model = unwrap_segmentor(runner.model)
    source = repr(args.checkpoint)
    backbone = getattr(model, "backbone", None)
    try:
        deployed = bool(is_deployed_state_dict(state, f"Checkpoint {source}"))
        if isinstance(backbone, RepVGG):
            ours = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
            check_backbone_structure(ours, deployed, backbone, source)
    except CheckpointError as error:
        raise SystemExit(f"ERROR: {error} (config {args.config!r})") from None
    problems = describe_key_mismatch(model.state_dict(), state)
    if problems:
        hint = (
            "A deployed segmentor from tools/deploy.py is tested with the *_deploy.py config "
            "written beside it."
            if deployed
            else "Test it with the config it was trained with."
        )
        raise SystemExit(
            f"ERROR: Checkpoint {source} does not fit the model of config {args.config!r} "
            f"(strict load): {problems}. {hint}"
        )
    runner.call_hook("after_load_checkpoint", checkpoint=checkpoint)
    model.load_state_dict(state, strict=True)
    logger.info("Loaded %s strictly.", args.checkpoint)


def fuse_and_check(model: torch.nn.Module, args: argparse.Namespace) -> None:
    """Fuses ``model`` in place and proves on the first test image that nothing changed.

    The comparison runs in float32 with TF32 off whatever the test precision
    (:mod:`repvgg_seg.equivalence`); a broken fusion ends the run before any testing.
    """
    segmentor = unwrap_segmentor(model)
    unfused = copy.deepcopy(segmentor).eval()
    reparameterize_model(model)
    check_cfg = Config.fromfile(args.config)  # the plain test pipeline, also under --tta
    if args.cfg_options:
        check_cfg.merge_from_dict(args.cfg_options)
    agreement = compare_on_batch(unfused, segmentor.eval(), first_dataset_batch(check_cfg))
    del unfused
    if is_main_process():
        print(f"--fuse check on the first test image: {agreement.describe()}")
    try:
        agreement.check("fused vs unfused segmentor on the first test image")
    except FusionMismatchError as error:
        raise SystemExit(f"ERROR: {error}") from error


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    checkpoint, state = read_weights(args.checkpoint)
    cfg = build_config(args, state)
    init_cpu_distributed(args.launcher)
    runner = RUNNERS.build(cfg) if "runner_type" in cfg else Runner.from_cfg(cfg)
    load_weights(runner, checkpoint, state, args)
    del checkpoint, state
    if args.fuse:
        fuse_and_check(runner.model, args)
    metrics = runner.test()
    if is_main_process():
        for name, value in metrics.items():
            print(f"{name}: {value:.2f}" if isinstance(value, float) else f"{name}: {value}")
    return metrics


if __name__ == "__main__":
    main()
