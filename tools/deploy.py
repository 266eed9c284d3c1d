"""Deploy a trained segmentor: fuse it, verify it is unchanged, write checkpoint + config.

Example::

    python tools/deploy.py configs/pspnet_repvgg_b1g2_fast.py work_dirs/b1g2/iter_7440.pth \
        work_dirs/b1g2/deploy --onnx

writes ``pspnet_repvgg_b1g2_fast_deploy.pth`` and ``..._deploy.py`` (and ``.onnx``); then
``python tools/test.py OUT/..._deploy.py OUT/..._deploy.pth`` gives the unfused model's mIoU.
The checkpoint may be training-time, fused, or an earlier deploy's (with its ``_deploy.py``
config). ``--bf16`` writes a model that runs in bfloat16 on CPU and reports how closely it
follows the float32 one. Exits with status 1, writing nothing, if the deployed model's
logits differ from the trained one's beyond float32 round-off or a pixel's class changed
where it was not a near-tie (:mod:`repvgg_seg.equivalence`), if a bf16 model is off by more
than bf16's own precision allows, or if ONNX Runtime disagrees with PyTorch; with status 2
(one line) on a missing file or dataset or an unusable output folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from repvgg_seg.cli import CheckFailedError, DictAction, UsageError, load_config, run_tool
from repvgg_seg.deploy import (
    BF16_UNIT_ROUNDOFF,
    DatasetUnavailableError,
    DeployOptions,
    DeployReport,
    deploy_checkpoint,
    native_bf16,
)
from repvgg_seg.deploy.winograd import MIN_CHANNELS_PER_GROUP, WINOGRAD_MODES
from repvgg_seg.output_dir import describe_removed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="the config the checkpoint was made with")
    parser.add_argument("checkpoint", help="trained, fused or deployed checkpoint")
    parser.add_argument("out_dir", type=Path, help="output folder")
    parser.add_argument(
        "--fuse-conv-bn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also fold conv+BN pairs in the heads and ResNet backbones (default: on)",
    )
    parser.add_argument(
        "--winograd",
        choices=WINOGRAD_MODES,
        default="off",
        help="how the deployed model runs its 3x3 stride-1 convs with enough channels by "
        "Winograd F(4x4,3x3) on CPU: off (oneDNN's direct convs), auto (where timing on "
        "first use finds it faster), on (default off: slower on the hosts measured, "
        "docs/benchmarks.md; same checkpoint either way; float32 only)",
    )
    parser.add_argument(
        "--no-winograd", dest="winograd", action="store_const", const="off", help="--winograd off"
    )
    parser.add_argument(
        "--winograd-min-channels",
        type=int,
        default=MIN_CHANNELS_PER_GROUP,
        help=f"input and output channels per group a conv needs for Winograd "
        f"(default {MIN_CHANNELS_PER_GROUP})",
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="write a model that runs in bfloat16 (weights and activations, channels-last) "
        "on CPU; its agreement with the float32 model is measured and reported",
    )
    parser.add_argument(
        "--random-size",
        nargs=2,
        type=int,
        default=None,
        metavar=("H", "W"),
        help="size of the random check input (default: the config's crop size)",
    )
    parser.add_argument(
        "--skip-real-image", action="store_true", help="do not check on the dataset's first image"
    )
    parser.add_argument("--onnx", action="store_true", help="also export and check ONNX")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 17")
    parser.add_argument(
        "--onnx-atol",
        type=float,
        default=1e-3,
        help="largest accepted |ONNX Runtime - PyTorch| logit difference (default 1e-3)",
    )
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        action=DictAction,
        metavar="KEY=VALUE",
        help="override config settings, as in tools/test.py (e.g. "
        "test_dataloader.dataset.data_root=DIR for the dataset-image check)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the trained and deployed models are compared, e.g. cuda (default cpu; "
        "always in float32 with TF32 off)",
    )
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> DeployOptions:
    """The command line's deploy options, checked (a bad combination is a UsageError that
    DeployOptions raises; any other exception there is a bug and keeps its traceback)."""
    return DeployOptions(
        fuse_conv_bn=args.fuse_conv_bn,
        random_size=tuple(args.random_size) if args.random_size else None,
        check_real_image=not args.skip_real_image,
        onnx=args.onnx,
        opset=args.opset,
        onnx_atol=args.onnx_atol,
        winograd=args.winograd,
        winograd_min_channels=args.winograd_min_channels,
        precision="bf16" if args.bf16 else "fp32",
        device=args.device,
    )


def print_report(report: DeployReport) -> None:
    """The checks, one line each."""
    if report.removed_leftovers:
        print(describe_removed(report.removed_leftovers, "staging folder(s) of a killed deploy"))
    print(f"conv+BN pairs folded outside RepVGG blocks: {report.folded_pairs}")
    print(f"convs run by Winograd F(4x4,3x3) on CPU: {report.winograd_convs}")
    for name, agreement in report.fusion_checks:
        print(f"{name}: {agreement.describe()}: {'ok' if agreement.ok else 'FAILED'}")
    for name, agreement in report.precision_checks:
        agreeing = 1 - agreement.changed / max(agreement.num_compared, 1)
        print(
            f"{name}: pixel agreement {100 * agreeing:.2f} % "
            f"({agreement.changed}/{agreement.num_compared} changed, "
            f"{agreement.changed_beyond_margin} beyond the bf16 margin), max |logit diff| "
            f"{agreement.max_relative_diff / BF16_UNIT_ROUNDOFF:.2g} x bf16 round-off (2^-8) "
            f"of the largest logit (accepted {agreement.rtol / BF16_UNIT_ROUNDOFF:g}): "
            f"{'ok' if agreement.ok else 'FAILED'}"
        )
    for index, agreement in enumerate(report.onnx_agreements or []):
        status = "ok" if report.onnx_passed(agreement) else "FAILED"
        print(
            f"  ONNX Runtime vs PyTorch, input {index}: max |logit diff| "
            f"{agreement.max_abs_diff:.3g} (accepted {report.onnx_atol:g}), changed pixels "
            f"{agreement.changed}/{agreement.num_compared}: {status}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = options_from(args)
    cfg = load_config(args.config, args.cfg_options)
    if options.precision == "bf16" and native_bf16() is False:
        print(
            "warning: this CPU has no native bfloat16 (no avx512_bf16 or amx_bf16 flag): "
            "bf16 runs emulated, slower than float32 here; deploy on the CPU that runs it."
        )
    try:
        report = deploy_checkpoint(cfg, args.checkpoint, args.out_dir, options)
    except DatasetUnavailableError as error:
        raise UsageError(
            f"{error} Deploy checks the model on the dataset's first image: prepare the "
            "dataset, point the config at it (--cfg-options "
            "test_dataloader.dataset.data_root=DIR), or pass --skip-real-image."
        ) from error
    print_report(report)
    if not report.passed:
        raise CheckFailedError(
            f"the deployed model does not reproduce the trained one (lines marked FAILED "
            f"above); nothing was written to {args.out_dir}."
        )
    if report.removed_earlier:
        # A deploy without --onnx into a folder where one with --onnx published: that ONNX is
        # of another model now, and would be mixed with this one's files.
        print(
            describe_removed(
                report.removed_earlier,
                "file(s) of the earlier deploy that "
                "this one does not write (they belong to the replaced model)",
            )
        )
    print(f"deployed checkpoint: {report.checkpoint}")
    print(f"deploy config:       {report.config}")
    if report.onnx is not None:
        print(f"ONNX:                {report.onnx}")
    return 0


if __name__ == "__main__":
    run_tool(main)
