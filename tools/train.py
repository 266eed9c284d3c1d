"""Trains a segmentor from an mmseg 1.x config (mmseg's own command line).

    python tools/train.py configs/pspnet_repvgg_b2.py [--work-dir DIR] [--resume [CKPT]]
        [--amp] [--cfg-options key=value ...] [--launcher {none,pytorch,slurm}]

Multi-GPU (or multi-process CPU): tools/dist_train.sh CONFIG NUM_PROCESSES [args].
"""

from __future__ import annotations

import argparse
import logging
import os
import os.path as osp

import torch
from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from repvgg_seg.checkpoint import CheckpointError
from repvgg_seg.datasets import CityscapesDataError
from repvgg_seg.runtime import (
    NothingToTrainError,
    WorkDirBusyError,
    configure_for_cpu,
    init_cpu_distributed,
)

# Errors whose message names the file or setting at fault and says what to do: printed as
# one line (no traceback) with a non-zero exit.
USER_ERRORS = (CheckpointError, CityscapesDataError, NothingToTrainError, WorkDirBusyError)


def one_line(error: BaseException) -> str:
    """The message of ``error``; of one re-raised from a DataLoader worker, the original's."""
    text = str(error).strip()
    if "Original Traceback" in text:  # torch's ExceptionWrapper.reraise
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


logger = logging.getLogger("tools.train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a segmentor (mmseg 1.x command line).")
    parser.add_argument("config", help="config file, e.g. configs/pspnet_repvgg_b2.py")
    parser.add_argument(
        "--work-dir", help="where logs and checkpoints go (default: work_dirs/<config name>)"
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CHECKPOINT",
        help="resume training: from the latest checkpoint in the work dir, or from CHECKPOINT",
    )
    parser.add_argument(
        "--amp", action="store_true", help="automatic mixed precision (needs a GPU)"
    )
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        action=DictAction,
        help="override config settings, e.g. train_cfg.max_iters=1000",
    )
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK instead.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def build_config(args: argparse.Namespace) -> Config:
    """The config with the command-line settings applied."""
    if not osp.isfile(args.config):
        raise SystemExit(
            f"Config file '{args.config}' does not exist (working directory: {os.getcwd()}). "
            "Pass one of the files under configs/, e.g. configs/pspnet_repvgg_a0.py."
        )
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("work_dirs", osp.splitext(osp.basename(args.config))[0])
    if args.amp:
        if not torch.cuda.is_available():
            raise SystemExit("--amp needs a CUDA GPU (mmengine's AmpOptimWrapper); none found.")
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    if args.resume:
        cfg.resume = True
        # None makes mmengine pick the latest checkpoint of work_dir.
        cfg.load_from = None if args.resume == "auto" else args.resume
    configure_for_cpu(cfg)
    return cfg


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = build_config(args)
    init_cpu_distributed(args.launcher)
    try:
        runner = RUNNERS.build(cfg) if "runner_type" in cfg else Runner.from_cfg(cfg)
        runner.train()
    except USER_ERRORS as error:
        raise SystemExit(f"tools/train.py: error: {one_line(error)}") from None


if __name__ == "__main__":
    main()
