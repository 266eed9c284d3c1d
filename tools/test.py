"""Tests a segmentor checkpoint and reports mIoU (mmseg 1.x's command line).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out DIR] [--show-dir DIR]
        [--fuse] [--tta] [--cfg-options key=value ...] [--launcher {none,pytorch,slurm}]

``--out`` and ``--show-dir`` must not be (or lie in, or hold) the test set's folders, and
must not hold files that no repvgg_seg tool wrote: the run would write over them.

The model comes from :func:`repvgg_seg.loader.load_segmentor`, which loads every checkpoint
form strictly: training-time or fused with the training config, a ``tools/deploy.py`` output
with its ``*_deploy.py`` config (bfloat16 too), ``module.`` prefixes of DDP. A checkpoint
that does not fit the config ends the run with one line naming both, before anything is
tested. ``--fuse`` re-parameterizes every RepVGG block after loading and first proves on the
first test image that the predictions did not change (:mod:`repvgg_seg.equivalence`).
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

from mmengine.config import Config
from mmengine.dist import is_main_process
from mmengine.registry import RUNNERS
from mmengine.runner import Runner
from mmseg.registry import MODELS
from torch import nn

from repvgg_seg.cli import DictAction, UsageError, load_config, run_tool, set_work_dir
from repvgg_seg.deploy import DatasetUnavailableError, compare_on_batch, first_dataset_batch
from repvgg_seg.loader import load_segmentor
from repvgg_seg.onnx_segmentor import is_onnx_file
from repvgg_seg.output_dir import claim_result_folders
from repvgg_seg.reparam import reparameterize_model
from repvgg_seg.runner import configure_for_cpu, init_cpu_distributed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Test a segmentor (mmseg 1.x command line).")
    parser.add_argument("config", help="config file")
    parser.add_argument("checkpoint", help="checkpoint file (training-time, fused or deployed)")
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


def check_output_dirs(args: argparse.Namespace) -> None:
    """Refuses output folders that cannot be folders, before anything runs."""
    for flag, path in (("--out", args.out), ("--show-dir", args.show_dir)):
        if path is not None and Path(path).exists() and not Path(path).is_dir():
            raise UsageError(
                f"{flag} {path!r} is an existing file, not a folder; pass a folder (it is "
                "created if missing)."
            )
    if args.work_dir is not None and Path(args.work_dir).is_file():
        raise UsageError(f"--work-dir {args.work_dir!r} is an existing file; pass a folder.")


def dataset_folders(cfg: Config) -> list[str]:
    """The test set's folders (its ``data_root``, else its ``data_prefix`` folders)."""
    dataset = cfg.test_dataloader.get("dataset", {})
    root = dataset.get("data_root") or ""
    prefixes = [p for p in (dataset.get("data_prefix") or {}).values() if isinstance(p, str)]
    return [root] if root else [p for p in prefixes if p]


def apply_test_options(cfg: Config, args: argparse.Namespace) -> Config:
    """The config with the command line's work dir, outputs and test mode applied."""
    cfg.launcher = args.launcher
    set_work_dir(cfg, args.config, args.work_dir)
    cfg.load_from = None  # the model comes loaded (strictly) from repvgg_seg.loader
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


def fuse_and_check(model: nn.Module, cfg: Config) -> None:
    """Fuses ``model`` in place and proves on the first test image that nothing changed.

    The comparison runs in float32 with TF32 off whatever the test precision
    (:mod:`repvgg_seg.equivalence`); a broken fusion ends the run (exit 1) before testing.
    """
    unfused = copy.deepcopy(model).eval()
    reparameterize_model(model)
    try:
        batch = first_dataset_batch(cfg)
    except DatasetUnavailableError as error:
        raise UsageError(
            f"{error} --fuse checks the fused model on the first test image; prepare the "
            "dataset or test without --fuse."
        ) from error
    agreement = compare_on_batch(unfused, model.eval(), batch)
    del unfused
    if is_main_process():
        print(f"--fuse check on the first test image: {agreement.describe()}")
    agreement.check("fused vs unfused segmentor on the first test image")


def build_runner(cfg: Config, model: nn.Module) -> Runner:
    """The config's runner (``runner_type``, as ``Runner.from_cfg`` builds it) around
    ``model``, which is built and loaded already."""
    runner_type = RUNNERS.get(cfg.runner_type) if "runner_type" in cfg else Runner

    class LoadedModelRunner(runner_type):
        def build_model(self, _model_cfg) -> nn.Module:  # from_cfg passes cfg.model
            return model

        def dump_config(self) -> None:
            # A test never replaces a file of the work dir (a training's config dump, or a
            # user's file of that name): mmengine's dump goes only where none exists.
            name = Path(self.cfg.filename).name if self.cfg.filename else f"{self.timestamp}.py"
            if not os.path.lexists(os.path.join(self.work_dir, name)):
                super().dump_config()

    return LoadedModelRunner.from_cfg(cfg)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.fuse and is_onnx_file(args.checkpoint):
        raise UsageError(
            f"--fuse re-parameterizes the RepVGG blocks of a PyTorch checkpoint; ONNX model "
            f"{args.checkpoint!r} is already fused (exported deployed): test it without --fuse."
        )
    check_output_dirs(args)
    cfg = load_config(args.config, args.cfg_options)
    # mmseg writes --out and --show-dir itself; the claim keeps them off the dataset and off
    # files no tool wrote (repvgg_seg.output_dir). Every rank writes; rank 0 claims.
    results = {"--out": args.out, "--show-dir": args.show_dir}
    first_rank = os.environ.get("RANK", "0") == "0"
    with claim_result_folders(results if first_rank else {}, dataset_folders(cfg), "tools/test.py"):
        model = load_segmentor(cfg, args.checkpoint)
        if args.fuse:
            fuse_and_check(model, cfg)  # on the plain test pipeline, also under --tta
        cfg = apply_test_options(model.cfg, args)
        if args.tta:
            model = MODELS.build({**cfg.tta_model, "module": model})
        init_cpu_distributed(args.launcher)
        metrics = build_runner(cfg, model).test()
    if is_main_process():
        for name, value in metrics.items():
            print(f"{name}: {value:.2f}" if isinstance(value, float) else f"{name}: {value}")
    return metrics


if __name__ == "__main__":
    run_tool(main)
