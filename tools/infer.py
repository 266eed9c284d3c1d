"""Segment your own images, folders and videos; writes coloured overlays (and label maps).

    python tools/infer.py CONFIG CHECKPOINT INPUTS... --out DIR [--device cpu|cuda]
        [--batch-size N] [--opacity A] [--fuse] [--save-labels] [--palette cityscapes]
        [--overwrite] [--strict-float32] [--max-pixels N]

CHECKPOINT is a training-time checkpoint (``--fuse`` re-parameterizes it first), a fused one
(recognised by its keys), or a ``tools/deploy.py`` output with its ``*_deploy.py`` config.
INPUTS are images, folders (searched recursively) and videos. Results mirror the inputs'
folders under ``DIR/overlays`` (and ``DIR/labels`` with ``--save-labels``: train-id PNGs of
the input's size). On CUDA, cuDNN's TF32 convs (PyTorch's default) can flip the class of
near-tie pixels between checkpoint forms; ``--strict-float32`` turns TF32 off.

Results never replace an input, are distinct for all inputs, and are never searched as
inputs; ``--overwrite`` replaces only results. An image above ``--max-pixels`` is skipped
before it is decoded (the bound on one image's memory), and so is one more than 100 times as
long as wide or a floating-point one; links in the input folders that lead nowhere are
skipped with one line saying so. Exit status: 0 when every input was
segmented, 1 when some could not be read or a video gave fewer frames than it declares (they
are listed), 2 when nothing was run (bad arguments, existing results), 130 on Ctrl-C (after
saying what was finished).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

from repvgg_seg.cli import UsageError, run_tool
from repvgg_seg.equivalence import strict_float32
from repvgg_seg.inference import (
    DEFAULT_MAX_PIXELS,
    PALETTE_NAMES,
    Palette,
    RunSummary,
    claim_out_dir,
    existing_outputs,
    find_sources,
    load_inference_model,
    num_classes_of,
    resolve_device,
    segment_sources,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="the checkpoint's config (*_deploy.py for a deployed one)")
    parser.add_argument("checkpoint", help="training-time, fused or deployed checkpoint")
    parser.add_argument("inputs", nargs="+", help="image files, folders or video files")
    parser.add_argument(
        "--out",
        "--out-dir",  # the old spelling, still accepted
        dest="out_dir",
        required=True,
        type=Path,
        help="folder the results are written to (as tools/test.py --out)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument(
        "--batch-size", type=int, default=1, help="images of one size per forward pass"
    )
    parser.add_argument(
        "--opacity", type=float, default=0.5, help="weight of the label colours, 0-1 (0.5)"
    )
    parser.add_argument(
        "--fuse", action="store_true", help="re-parameterize the RepVGG blocks after loading"
    )
    parser.add_argument("--save-labels", action="store_true", help="also write train-id label PNGs")
    parser.add_argument(
        "--palette",
        default="cityscapes",
        choices=PALETTE_NAMES,
        metavar="NAME",
        help="class names and colours of this mmseg dataset (default: cityscapes)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace results that exist already"
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help="skip images (and videos) of more pixels per image, before decoding them: the "
        f"bound on one image's memory (default {DEFAULT_MAX_PIXELS}, 6000x6000)",
    )
    parser.add_argument(
        "--strict-float32",
        action="store_true",
        help="true float32 on CUDA (TF32 off), as the fusion checks run: every checkpoint form "
        "then gives the same labels (slower on GPUs with TF32)",
    )
    args = parser.parse_args(argv)
    if not 0.0 <= args.opacity <= 1.0:
        parser.error(f"--opacity must be between 0 and 1, got {args.opacity}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_pixels < 1:
        parser.error(f"--max-pixels must be at least 1, got {args.max_pixels}")
    return args


def describe_device(device: torch.device) -> str:
    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def describe(summary: RunSummary, device: str) -> str:
    done = f"{summary.images} images"
    if summary.videos:
        done += f" and {summary.frames} frames of {summary.videos} videos"
    text = (
        f"segmented {done} in {summary.seconds:.1f} s "
        f"({summary.images_per_second:.2f} images/s) on {device}"
    )
    if summary.interrupted:
        text = "interrupted (Ctrl-C): " + text
    return text + (f"; {len(summary.failed)} failed" if summary.failed else "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    palette = Palette.from_dataset(args.palette)
    device = resolve_device(args.device)
    broken_links: list[Path] = []
    sources = find_sources(args.inputs, args.out_dir, args.save_labels, broken_links)
    if broken_links:
        print(
            f"skipped {len(broken_links)} symbolic link(s) in the input folders that lead "
            f"nowhere (a missing target or a loop), e.g. {str(broken_links[0])!r}",
            file=sys.stderr,
        )
    existing = existing_outputs(sources)
    if existing and not args.overwrite:
        raise UsageError(
            f"{len(existing)} result(s) exist already, e.g. {str(existing[0])!r}; pass "
            "--overwrite to replace them, or choose another --out-dir."
        )
    model = load_inference_model(args.config, args.checkpoint, device, fuse=args.fuse)
    if num_classes_of(model) != len(palette.classes):
        raise UsageError(
            f"The model predicts {num_classes_of(model)} classes but palette "
            f"{args.palette!r} has {len(palette.classes)}; pass a --palette with "
            f"{num_classes_of(model)} classes."
        )
    with claim_out_dir(args.out_dir, overwrite=args.overwrite) as leftovers:
        for path in leftovers:
            print(f"removed {path}, left by a run that was killed", file=sys.stderr)
        with strict_float32() if args.strict_float32 else contextlib.nullcontext():
            summary = segment_sources(
                model, sources, palette, args.opacity, args.batch_size, max_pixels=args.max_pixels
            )
    for _, reason in summary.failed:
        print(f"failed: {reason}", file=sys.stderr)
    print(describe(summary, describe_device(device)) + f"; results in {args.out_dir}")
    if summary.interrupted:
        raise KeyboardInterrupt
    return 1 if summary.failed else 0


if __name__ == "__main__":
    run_tool(main)
