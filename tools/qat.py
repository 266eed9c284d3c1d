"""Quantization-aware fine-tuning of a trained segmentor, exported as INT8 (ONNX Runtime QDQ).

    python tools/qat.py CONFIG CHECKPOINT OUT_DIR [--iters 200] [--lr 0.001]
        [--label-weight 0] [--distill-weight 1] [--learn-scales]
        [--work-dir DIR]
        [--resume | --overwrite-work-dir] [--amp] [--launcher none|pytorch]
        [--calib-images N] [--calib-method minmax|percentile]
        [--per-channel|--no-per-channel] [--activations auto|int8|uint8]
        [--keep-float-layers NAME ...]
        [--eval-images M] [--max-miou-drop D] [--compare-ptq] [--cfg-options key=value ...]

Deploys the checkpoint (fusion, conv+BN folding), calibrates and quantizes it as
tools/quantize.py does, then fine-tunes the deployed model with its activations and weights
rounded as that INT8 model rounds them, on the config's train dataloader through mmengine's
runner (poly LR, log lines with ETA, checkpoints in the work dir, default
``OUT_DIR/<stem>_qat_work``; ``--resume`` continues an interrupted run). The trained weights
are quantized with the same ranges into the same QDQ format, measured against the float model
on M val images, and written as ``OUT_DIR/<stem>_qat.onnx`` and ``..._qat.json`` only when the
mIoU dropped by at most D; otherwise it exits 1 writing nothing there.

Several processes: torchrun --nproc_per_node N tools/qat.py ... --launcher pytorch
"""

from __future__ import annotations

import argparse
import os

from repvgg_seg.cli import CheckFailedError, DictAction, load_config, run_tool
from repvgg_seg.cli.quantize_flags import (
    add_checkpoint_arguments,
    add_quantize_flags,
    quantize_options_from,
)
from repvgg_seg.quantize.qat import QATOptions, QATReport, qat_checkpoint
from repvgg_seg.quantize.qat_runner import QATSchedule
from repvgg_seg.runner import init_distributed
from repvgg_seg.work_dir import START_OVER_FLAG

TRAINING = QATSchedule()
# tools/quantize.py's flags that apply here (not the sensitivity ranking), in this order.
QAT_FLAGS = (
    "--calib-images",
    "--calib-method",
    "--per-channel",
    "--activations",
    "--keep-float-layers",
    "--eval-images",
    "--max-miou-drop",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_checkpoint_arguments(parser)
    training = parser.add_argument_group("fine-tuning")
    training.add_argument("--iters", type=int, default=TRAINING.iterations, metavar="N")
    training.add_argument("--lr", type=float, default=TRAINING.lr, help="start LR (poly to 0)")
    training.add_argument(
        "--label-weight",
        type=float,
        default=TRAINING.label_weight,
        help="weight of the config's loss on the labels",
    )
    training.add_argument(
        "--distill-weight",
        type=float,
        default=TRAINING.distill_weight,
        help="weight of the KL divergence from the float model's predictions",
    )
    training.add_argument("--checkpoint-interval", type=int, default=TRAINING.checkpoint_interval)
    training.add_argument("--log-interval", type=int, default=TRAINING.log_interval)
    training.add_argument("--work-dir", help="training work dir (default OUT_DIR/<stem>_qat_work)")
    start = training.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue the work dir's training")
    start.add_argument(
        START_OVER_FLAG,
        dest="overwrite_work_dir",
        action="store_true",
        help="delete the work dir's earlier checkpoints and start over",
    )
    training.add_argument("--amp", action="store_true", help="mixed precision (needs a GPU)")
    training.add_argument(
        "--learn-scales",
        action="store_true",
        help="train the activation scales too (LSQ; the INT8 model holds the trained ones)",
    )
    training.add_argument("--launcher", choices=["none", "pytorch"], default="none")
    training.add_argument("--local_rank", "--local-rank", type=int, default=0)
    quant = parser.add_argument_group("quantization and measurement (as tools/quantize.py)")
    add_quantize_flags(quant, QAT_FLAGS, short=True)
    quant.add_argument(
        "--compare-ptq",
        action="store_true",
        help="also measure the post-training INT8 model (tools/quantize.py's) and report it",
    )
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def options_of(args: argparse.Namespace) -> QATOptions:
    return QATOptions(
        quantize=quantize_options_from(args),
        schedule=QATSchedule(
            iterations=args.iters,
            lr=args.lr,
            label_weight=args.label_weight,
            distill_weight=args.distill_weight,
            checkpoint_interval=args.checkpoint_interval,
            log_interval=args.log_interval,
            amp=args.amp,
            learn_scales=args.learn_scales,
        ),
        work_dir=args.work_dir,
        resume=args.resume,
        start_over=args.overwrite_work_dir,
        launcher=args.launcher,
        compare_ptq=args.compare_ptq,
    )


def print_report(report: QATReport) -> None:
    seconds = ", ".join(f"{step} {value:.1f}" for step, value in report.seconds.items())
    print(f"QAT: {report.qat.schedule.iterations} iterations; seconds: {seconds}")
    if report.scale_change is not None:
        largest, median = report.scale_change
        print(
            f"learned activation scales: changed by {median:.2f} % (median), {largest:.2f} % (max)"
        )
    if report.ptq_evaluation is not None:
        print(f"post-training INT8: {report.ptq_evaluation.describe()}")
    print(f"QAT INT8:           {report.evaluation.describe()}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = options_of(args)
    cfg = load_config(args.config, args.cfg_options)
    init_distributed(args.launcher, cfg)
    report = qat_checkpoint(cfg, args.checkpoint, args.out_dir, options)
    if report is None:  # a rank other than 0: rank 0 exports and measures
        return 0
    print_report(report)
    if not report.passed:
        raise CheckFailedError(
            f"QAT INT8 mIoU dropped by {report.miou_drop:.2f} (more than --max-miou-drop "
            f"{options.quantize.max_miou_drop:g}); nothing written to '{args.out_dir}'. Try more "
            f"--iters or another --lr; the training is in '{report.work_dir}' (--resume)."
        )
    print(f"INT8 model: {report.onnx}\nreport:     {report.report}")
    return 0


if __name__ == "__main__":
    run_tool(main)
