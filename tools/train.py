"""Trains a segmentor from an mmseg 1.x config (mmseg's own command line).

    python tools/train.py configs/pspnet_repvgg_b2.py [--work-dir DIR]
        [--resume [CKPT] | --overwrite-work-dir] [--amp] [--cfg-options key=value ...]
        [--launcher {none,pytorch,slurm}]

A work dir holds one training: a second one started in it while it runs is refused, and a
run started where an earlier one left checkpoints must say what it wants: ``--resume`` to
continue that run, or ``--overwrite-work-dir`` to delete its checkpoints and start over. A
file no training wrote (a user's ``best_model.pth``, or ``<config name>.py`` where the config
is dumped) is never replaced or deleted: the run is refused, naming it. A refused run
changes nothing in the work dir.

Multi-GPU (or multi-process CPU): tools/dist_train.sh CONFIG NUM_PROCESSES [args].
"""

from __future__ import annotations

import argparse
import os
import re

import torch
from mmengine.config import Config
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from repvgg_seg.cli import DictAction, UsageError, load_config, run_tool, set_work_dir
from repvgg_seg.runner import check_resume, claim_work_dir, configure_for_cpu, init_distributed
from repvgg_seg.runner.claim import config_dump_name, record_config_dump
from repvgg_seg.work_dir import START_OVER_FLAG

# A config key that no constructor takes (a typo): "RepVGG.__init__() got an unexpected
# keyword argument 'archh'" (mmengine's registry may prefix "class `X` in path.py: "), or a
# type no registry knows ("... is not in the mmseg::model registry").
_BAD_KEY = re.compile(r"(\w+\.__init__\(\) .*)|(\S+ is not in the \S+ registry.*)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a segmentor (mmseg 1.x command line).")
    parser.add_argument("config", help="config file, e.g. configs/pspnet_repvgg_b2.py")
    parser.add_argument(
        "--work-dir", help="where logs and checkpoints go (default: work_dirs/<config name>)"
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CHECKPOINT",
        help="resume training: from the latest checkpoint in the work dir, or from CHECKPOINT",
    )
    start.add_argument(
        START_OVER_FLAG,
        dest="overwrite_work_dir",
        action="store_true",
        help="start over in a work dir that holds an earlier run's checkpoints: they "
        "(iter_*.pth, epoch_*.pth, best_*.pth, last_checkpoint that a training wrote) are "
        "deleted first; its logs stay",
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
    """The config with the command-line settings applied.

    Raises:
        UsageError: A missing or unreadable config, options that do not apply, or ``--amp``
            without a GPU.
    """
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    set_work_dir(cfg, args.config, args.work_dir)
    if args.amp:
        if not torch.cuda.is_available():
            raise UsageError("--amp needs a CUDA GPU (mmengine's AmpOptimWrapper); none found.")
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    if args.resume:
        cfg.resume = True
        # None makes the runner pick the latest checkpoint of work_dir.
        cfg.load_from = None if args.resume == "auto" else args.resume
    configure_for_cpu(cfg)
    return cfg


def build_runner(cfg: Config, config_path: str) -> Runner:
    """The config's runner; a setting no constructor takes is the user's error.

    Raises:
        UsageError: A constructor refused an argument (a typo in a key, e.g.
            ``--cfg-options model.backbone.archh=A0``), or a logging backend the config names
            needs a package that is not installed.
    """
    try:
        return RUNNERS.build(cfg) if "runner_type" in cfg else Runner.from_cfg(cfg)
    except ImportError as error:
        # mmengine's optional logging backends (TensorBoard, W&B, MLflow, ...) say which
        # package to install; any other import error is a bug and keeps its traceback.
        if "pip install" not in str(error):
            raise
        raise UsageError(f"Config '{config_path}': {error}") from error
    except (TypeError, KeyError) as error:
        found = _BAD_KEY.search(str(error.args[0]) if error.args else "")
        if found is None:
            raise
        raise UsageError(
            f"Config '{config_path}' does not build: {found.group(0).rstrip('.')}. Check the "
            "key's spelling in the config and in --cfg-options."
        ) from error


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = build_config(args)
    init_distributed(args.launcher, cfg)
    # Claimed before the runner is built: building it writes the config and a log into the
    # work dir, which a refused run must leave as it is.
    resume_from = cfg.get("load_from") if args.resume else None
    # The config dump must not replace a file of the user's of that name (output_dir's rule).
    dump = [name] if (name := config_dump_name(cfg)) else []
    with claim_work_dir(
        cfg.work_dir,
        bool(args.resume),
        resume_from,
        args.overwrite_work_dir,
        outputs=dump,
        config=cfg,
    ):
        if args.resume:
            check_resume(cfg)  # as strictly as tools/test.py loads, before anything is written
        runner = build_runner(cfg, args.config)
        record_config_dump(cfg)
        runner.train()


if __name__ == "__main__":
    run_tool(main)
