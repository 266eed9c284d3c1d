"""Deploy a trained segmentor: fuse it, verify it is unchanged, write checkpoint + config.

Example::

    python tools/deploy.py configs/pspnet_repvgg_b1g2_fast.py work_dirs/b1g2/iter_7440.pth \
        work_dirs/b1g2/deploy --onnx

writes ``pspnet_repvgg_b1g2_fast_deploy.pth`` and ``..._deploy.py`` (and ``.onnx``); then
``python tools/test.py OUT/..._deploy.py OUT/..._deploy.pth`` gives the unfused model's mIoU.
Exits with status 1, writing nothing, if the deployed model's logits differ from the trained
one's beyond float32 round-off or a pixel's class changed where it was not a near-tie
(:mod:`repvgg_seg.equivalence`), or if ONNX Runtime disagrees with PyTorch; with status 2 on
a missing file or dataset.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repvgg_seg.deploy import deploy_checkpoint  # noqa: E402
from repvgg_seg.deploy.winograd import MIN_CHANNELS_PER_GROUP  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="training config")
    parser.add_argument("checkpoint", help="trained checkpoint")
    parser.add_argument("out_dir", type=Path, help="output folder")
    parser.add_argument(
        "--fuse-conv-bn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also fold conv+BN pairs in the heads and ResNet backbones (default: on)",
    )
    parser.add_argument(
        "--winograd",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the deployed model runs its 3x3 stride-1 convs with enough channels by "
        "Winograd F(4x4,3x3) on CPU (default: on; same checkpoint either way)",
    )
    parser.add_argument(
        "--winograd-min-channels",
        type=int,
        default=MIN_CHANNELS_PER_GROUP,
        help=f"input and output channels per group a conv needs for Winograd "
        f"(default {MIN_CHANNELS_PER_GROUP})",
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
        "--device",
        default="cpu",
        help="where the trained and deployed models are compared, e.g. cuda (default cpu; "
        "always in float32 with TF32 off)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        report = deploy_checkpoint(
            args.config,
            args.checkpoint,
            args.out_dir,
            fuse_conv_bn=args.fuse_conv_bn,
            random_size=tuple(args.random_size) if args.random_size else None,
            check_real_image=not args.skip_real_image,
            onnx=args.onnx,
            opset=args.opset,
            winograd=args.winograd,
            winograd_min_channels=args.winograd_min_channels,
            onnx_atol=args.onnx_atol,
            device=args.device,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 2
    print(f"conv+BN pairs folded outside RepVGG blocks: {report.folded_pairs}")
    print(f"convs run by Winograd F(4x4,3x3) on CPU: {report.winograd_convs}")
    for name, agreement in report.fusion_checks:
        status = "ok" if agreement.ok else "FAILED"
        print(f"{name}: {agreement.describe()}: {status}")
    for index, agreement in enumerate(report.onnx_agreements or []):
        status = "ok" if agreement.max_abs_diff <= args.onnx_atol else "FAILED"
        print(
            f"  ONNX Runtime vs PyTorch, input {index}: max |logit diff| "
            f"{agreement.max_abs_diff:.3g} (accepted {args.onnx_atol:g}), changed pixels "
            f"{agreement.changed}/{agreement.num_compared}: {status}"
        )
    if not report.passed:
        print(
            "FAILED: the deployed model does not reproduce the trained one; nothing was "
            f"written to {args.out_dir}.",
            file=sys.stderr,
        )
        return 1
    print(f"deployed checkpoint: {report.checkpoint}")
    print(f"deploy config:       {report.config}")
    if report.onnx is not None:
        print(f"ONNX:                {report.onnx}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
