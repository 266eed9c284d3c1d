"""Writes a synthetic Cityscapes (real layout and file names) for demos and tests.

    python tools/make_synthetic_cityscapes.py data/synthetic_cityscapes \
        [--num-train 60] [--num-val 12] [--size 256 128] [--seed 0]

The scenes are generated, not photographs: never evaluate a model on them and report the
number as a Cityscapes result. See repvgg_seg/datasets/synthetic.py. It refuses (one line,
exit 2) a ROOT that is a file or a non-empty folder it did not write, and sizes or counts
that make no dataset.
"""

from __future__ import annotations

import argparse
import logging

from repvgg_seg.cli import run_tool
from repvgg_seg.datasets import make_synthetic_cityscapes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="data/synthetic_cityscapes")
    parser.add_argument("--num-train", type=int, default=60)
    parser.add_argument("--num-val", type=int, default=12)
    parser.add_argument(
        "--size", type=int, nargs=2, default=(256, 128), metavar=("WIDTH", "HEIGHT")
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = make_synthetic_cityscapes(
        args.root, args.num_train, args.num_val, tuple(args.size), args.seed
    )
    print(f"synthetic Cityscapes: {root} ({args.num_train} train, {args.num_val} val)")


if __name__ == "__main__":
    run_tool(main)
