"""Quantize a trained segmentor to INT8 (ONNX Runtime, static QDQ) and measure its accuracy.

    python tools/quantize.py CONFIG CHECKPOINT OUT_DIR [--calib-images N]
        [--calib-method minmax|percentile] [--per-channel|--no-per-channel]
        [--activations auto|int8|uint8]
        [--eval-images M] [--max-miou-drop D] [--sensitivity] [--keep-float K]
        [--keep-float-layers NAME ...] [--cfg-options key=value ...]

Deploys the checkpoint (any form tools/deploy.py takes: fusion, conv+BN folding), exports
it to ONNX, calibrates on N images of the config's train pipeline and quantizes statically
(signed 8-bit activations and weights, QDQ). Then measures the INT8 model against the float
one on M val images through the config's test pipeline and mmseg's IoUMetric, and writes
``OUT_DIR/<config stem>_int8.onnx`` and ``..._int8.json`` (the measurement, the settings,
the host) only when the mIoU dropped by at most D; otherwise exits 1 writing nothing.
``tools/test.py CONFIG OUT_DIR/<stem>_int8.onnx`` tests the result like a checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmengine.utils import ProgressBar

from repvgg_seg.cli import CheckFailedError, DictAction, load_config, run_tool
from repvgg_seg.output_dir import describe_removed
from repvgg_seg.quantize import QuantizeOptions, QuantizeReport, quantize_checkpoint
from repvgg_seg.quantize.onnx_quant import ACTIVATION_FORMATS, CALIBRATION_METHODS

DEFAULTS = QuantizeOptions()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="the checkpoint's config (training or *_deploy.py)")
    parser.add_argument("checkpoint", help="training-time, fused or deployed checkpoint")
    parser.add_argument("out_dir", type=Path, help="output folder")
    parser.add_argument(
        "--calib-images",
        type=int,
        default=DEFAULTS.calib_images,
        metavar="N",
        help=f"calibration images from the train pipeline (default {DEFAULTS.calib_images})",
    )
    parser.add_argument(
        "--calib-method",
        choices=sorted(CALIBRATION_METHODS),
        default=DEFAULTS.calib_method,
        help=f"how activation ranges are set (default {DEFAULTS.calib_method})",
    )
    parser.add_argument(
        "--per-channel",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.per_channel,
        help="one weight scale per output channel (default: on)",
    )
    parser.add_argument(
        "--activations",
        choices=ACTIVATION_FORMATS,
        default=DEFAULTS.activations,
        help="how the INT8 model stores activations: int8, uint8 (the same numbers; ONNX "
        "Runtime's fast form on CPUs with VNNI or AMX) or auto, by this host's CPU (default)",
    )
    parser.add_argument(
        "--eval-images",
        type=int,
        default=DEFAULTS.eval_images,
        metavar="M",
        help=f"val images INT8 is measured on against float (default {DEFAULTS.eval_images})",
    )
    parser.add_argument(
        "--max-miou-drop",
        type=float,
        default=DEFAULTS.max_miou_drop,
        metavar="D",
        help=f"refuse (exit 1, write nothing) above this mIoU drop (default "
        f"{DEFAULTS.max_miou_drop})",
    )
    parser.add_argument(
        "--sensitivity",
        action="store_true",
        help="rank the convs by how much each alone, quantized, moves the logits",
    )
    parser.add_argument(
        "--keep-float",
        type=int,
        default=0,
        metavar="K",
        help="leave the K most sensitive convs in float32 (ranks them; default 0)",
    )
    parser.add_argument(
        "--keep-float-layers",
        nargs="+",
        default=[],
        metavar="NAME",
        help="leave these convs (PyTorch module names, e.g. backbone.stages.2.13.fused_conv) "
        "in float32",
    )
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    return parser.parse_args(argv)


class ProgressBars:
    """One progress bar on stderr per long step; :meth:`close` ends one left unfinished (an
    error or Ctrl-C mid-step), so that the next line starts on a line of its own."""

    def __init__(self) -> None:
        self._bar: ProgressBar | None = None

    def __call__(self, what: str, total: int):
        """A bar of ``total`` steps for ``what``; returns its update function."""
        self.close()
        print(f"{what}:", file=sys.stderr)
        bar = self._bar = ProgressBar(total, file=sys.stderr)

        def update() -> None:
            bar.update()
            if bar.completed == total:
                print(file=sys.stderr, flush=True)

        return update

    def close(self) -> None:
        if self._bar is not None and self._bar.completed < self._bar.task_num:
            print(file=sys.stderr, flush=True)
        self._bar = None


def print_report(report: QuantizeReport) -> None:
    if report.removed_leftovers:
        print(describe_removed(report.removed_leftovers, "staging folder(s) of a killed run"))
    if report.sensitivity is not None:
        print("convs by sensitivity (relative logit error when quantized alone):")
        for rank, layer in enumerate(report.sensitivity, 1):
            kept = "  (kept in float32)" if layer.name in report.kept_float else ""
            print(f"  {rank:3d}. {layer.name}: {layer.relative_error:.4f}{kept}")
    if report.calibration_images < report.options.calib_images:
        print(
            f"calibrated on all {report.calibration_images} training images (--calib-images "
            f"{report.options.calib_images} asked for more than the training set holds)"
        )
    kept = ", ".join(report.kept_float) or "none"
    print(
        f"convs quantized: {report.convs - len(report.kept_float)}/{report.convs}; float: {kept}; "
        f"activations {report.activations}"
    )
    print(report.evaluation.describe())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = QuantizeOptions(
        calib_images=args.calib_images,
        calib_method=args.calib_method,
        per_channel=args.per_channel,
        activations=args.activations,
        eval_images=args.eval_images,
        max_miou_drop=args.max_miou_drop,
        sensitivity=args.sensitivity,
        keep_float=args.keep_float,
        keep_float_layers=tuple(args.keep_float_layers),
    )
    cfg = load_config(args.config, args.cfg_options)
    bars = ProgressBars()
    try:
        report = quantize_checkpoint(cfg, args.checkpoint, args.out_dir, options, bars)
    finally:
        bars.close()
    print_report(report)
    if not report.passed:
        raise CheckFailedError(
            f"INT8 mIoU dropped by {report.miou_drop:.2f} (more than --max-miou-drop "
            f"{options.max_miou_drop:g}); nothing written to '{args.out_dir}'. Try --keep-float "
            "K (the most sensitive convs in float32) or tools/qat.py (quantization-aware "
            "fine-tuning)."
        )
    print(f"INT8 model: {report.onnx}\nreport:     {report.report}")
    return 0


if __name__ == "__main__":
    run_tool(main)
