"""Draw training curves of one or more runs into one PNG (several runs overlaid).

    python tools/plot_logs.py WORK_DIR [WORK_DIR ...] --out curves.png

A WORK_DIR is a ``tools/train.py`` work dir (loss, learning rate and val mIoU against the
iteration, from every ``<timestamp>/vis_data/scalars.json`` in it) or a
``tools/pretrain_imagenet.py`` output dir (train and val loss, learning rate and val top-1
against the epoch, from ``metrics.jsonl``). Runs of one kind share a figure.
"""

from __future__ import annotations

import argparse

from repvgg_seg.cli import run_tool
from repvgg_seg.curves import plot_runs, read_run, unique_names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work_dirs", nargs="+", metavar="WORK_DIR", help="run directories")
    parser.add_argument("--out", default="curves.png", help="PNG to write (default: %(default)s)")
    parser.add_argument("--title", help="figure title (default: none)")
    parser.add_argument("--verbose", action="store_true", help="show third-party warnings")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    names = unique_names(args.work_dirs)
    runs = [read_run(path, name) for path, name in zip(args.work_dirs, names)]
    out = plot_runs(runs, args.out, title=args.title)
    print(f"Wrote {out} ({len(runs)} run{'s' if len(runs) > 1 else ''}, {runs[0].x_label}s)")


if __name__ == "__main__":
    run_tool(main)
