"""Convert any RepVGG checkpoint into this package's backbone weights.

    python tools/convert_checkpoint.py SRC DST [--arch B2] [--deploy] [--bare]

SRC is a local file, an http(s) URL, or a published name (``repvgg:B2``), in any format
the backbone loads: the official release (``stage0.rbr_dense...``, with or without
``module.``), mmpretrain, timm, our pretraining or mmseg checkpoints; training-time or
fused. DST gets ``{'state_dict': ..., 'meta': {...}}`` (``--bare``: the state dict alone),
which loads strictly into ``RepVGG(arch=ARCH, deploy=DEPLOY)``: DEPLOY is True when SRC was
fused or ``--deploy`` fused it. The classification head is left out.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repvgg_seg.checkpoint import CheckpointError  # noqa: E402
from repvgg_seg.models.arch import ARCHS  # noqa: E402
from repvgg_seg.weights import ChecksumError, convert_checkpoint_file  # noqa: E402

logger = logging.getLogger("tools.convert_checkpoint")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="checkpoint: local path, http(s) URL, or repvgg:NAME")
    parser.add_argument("dst", help="output .pth file (written atomically)")
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        meta = convert_checkpoint_file(
            args.src,
            args.dst,
            arch=args.arch,
            deploy=True if args.deploy else None,
            wrap=not args.bare,
        )
    except (CheckpointError, ChecksumError, FileNotFoundError, ConnectionError, ValueError) as e:
        logger.error("%s", e)
        return 1
    logger.info("Load it with RepVGG(arch=%r, deploy=%s).", meta["arch"], meta["deploy"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
