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

from mmengine.utils import ProgressBar

from repvgg_seg.cli import CheckFailedError, DictAction, load_config, run_tool
from repvgg_seg.cli.quantize_flags import (
    add_checkpoint_arguments,
    add_quantize_flags,
    quantize_options_from,
)
from repvgg_seg.output_dir import describe_removed
from repvgg_seg.quantize import QuantizeReport, quantize_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_checkpoint_arguments(parser)
    add_quantize_flags(parser)
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
    options = quantize_options_from(args)
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
