"""Convert any RepVGG checkpoint into this package's backbone weights.

    python tools/convert_checkpoint.py SRC DST [--arch B2] [--deploy] [--bare]

SRC is a local file, an http(s) URL, or a published name (``repvgg:B2``), in any format
the backbone loads: the official release (``stage0.rbr_dense...``, with or without
``module.``), mmpretrain, timm, our pretraining or mmseg checkpoints; training-time or
fused. DST gets ``{'state_dict': ..., 'meta': {...}}`` (``--bare``: the state dict alone),
which loads strictly into ``RepVGG(arch=ARCH, deploy=DEPLOY)``: DEPLOY is True when SRC was
fused or ``--deploy`` fused it. The classification head is left out. DST must be another
file than SRC (also through a link): the conversion never replaces its own source; an
existing DST is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import logging
import os

from repvgg_seg.cli import UsageError, run_tool
from repvgg_seg.models.arch import ARCHS
from repvgg_seg.output_dir import check_file_output
from repvgg_seg.weights import convert_checkpoint_file, resolve_checkpoint

logger = logging.getLogger("tools.convert_checkpoint")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="checkpoint: local path, http(s) URL, or repvgg:NAME")
    parser.add_argument("dst", help="output .pth file (written atomically; not SRC itself)")
    parser.add_argument(
        "--arch",
        choices=list(ARCHS),
        help="expected variant; the conversion fails if SRC holds another (default: inferred)",
    )
    parser.add_argument(
        "--deploy", action="store_true", help="fuse a training-time checkpoint into one conv"
    )
    parser.add_argument(
        "--bare", action="store_true", help="save the bare state dict, not under 'state_dict'"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    return parser.parse_args(argv)


def check_distinct(src: str, dst: str) -> None:
    """Refuses a DST that is SRC's file (by inode: the same name, a hard or a symbolic link).

    SRC is resolved first (a URL or published name to its cached file), so that a DST in the
    weights cache cannot replace the cached source either.

    Raises:
        UsageError: SRC is a folder; DST is the file SRC reads.
    """
    if os.path.isdir(src):
        raise UsageError(f"SRC {src!r} is a folder; pass the checkpoint file in it.")
    source = resolve_checkpoint(src)
    if os.path.exists(dst) and os.path.samefile(source, dst):
        raise UsageError(
            f"DST {dst!r} is the file SRC {src!r} reads ({os.path.realpath(source)}); writing "
            "it would replace the source checkpoint. Pass another DST file name."
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    check_distinct(args.src, args.dst)
    # After check_distinct: SRC as DST is named as such, with or without --overwrite.
    check_file_output(args.dst, "DST", args.overwrite)
    meta = convert_checkpoint_file(
        args.src,
        args.dst,
        arch=args.arch,
        deploy=True if args.deploy else None,
        wrap=not args.bare,
    )
    # Fused weights are the same network for both block types; training-time ones are not.
    qarepvgg = not meta["deploy"] and meta["block_type"] != "RepVGG"
    block = f", block_type={meta['block_type']!r}" if qarepvgg else ""
    logger.info("Load it with RepVGG(arch=%r, deploy=%s%s).", meta["arch"], meta["deploy"], block)
    return 0


if __name__ == "__main__":
    run_tool(main)
