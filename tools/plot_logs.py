"""Draw training curves of one or more runs into one PNG (several runs overlaid).

    python tools/plot_logs.py WORK_DIR [WORK_DIR ...] --out curves.png

A WORK_DIR is a ``tools/train.py`` work dir (loss, learning rate and val mIoU against the
iteration, from every ``<timestamp>/vis_data/scalars.json`` in it) or a
``tools/pretrain_imagenet.py`` output dir (train and val loss, learning rate and val top-1
against the epoch, from ``metrics.jsonl``). Runs of one kind share a figure.

The figure is a PNG; ``--out`` must end in ``.png``, must not be one of the logs read, and is
not replaced when it exists unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from repvgg_seg.cli import UsageError, run_tool
from repvgg_seg.curves import plot_runs, read_run, scalar_files, unique_names
from repvgg_seg.output_dir import check_file_output, refuse_input_as_output

# tools/pretrain_imagenet.py's log in its output dir (curves.read_run reads it).
PRETRAINING_LOG = "metrics.jsonl"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work_dirs", nargs="+", metavar="WORK_DIR", help="run directories")
    parser.add_argument("--out", default="curves.png", help="PNG to write (default: %(default)s)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists already"
    )
    parser.add_argument("--title", help="figure title (default: none)")
    parser.add_argument("--verbose", action="store_true", help="show third-party warnings")
    return parser.parse_args(argv)


def check_out(out: str, work_dirs: list[str], overwrite: bool) -> None:
    """Refuses, before anything is read, an ``--out`` that would not be a PNG of that name,
    that is one of the logs read, or that exists (unless ``overwrite``).

    Raises:
        UsageError: Naming ``--out`` and what to pass.
    """
    logs = []
    for work_dir in map(Path, work_dirs):
        logs += scalar_files(work_dir) if work_dir.exists() else []
        logs += [work_dir / PRETRAINING_LOG] if work_dir.is_dir() else []
    refuse_input_as_output(out, [log for log in logs if log.exists()], "--out")
    if Path(out).suffix.lower() != ".png":
        raise UsageError(
            f"--out {out!r}: tools/plot_logs.py writes a PNG image; pass a file name ending "
            "in .png."
        )
    check_file_output(out, "--out", overwrite)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_out(args.out, args.work_dirs, args.overwrite)
    names = unique_names(args.work_dirs)
    runs = [read_run(path, name) for path, name in zip(args.work_dirs, names)]
    out = plot_runs(runs, args.out, title=args.title)
    print(f"Wrote {out} ({len(runs)} run{'s' if len(runs) > 1 else ''}, {runs[0].x_label}s)")


if __name__ == "__main__":
    run_tool(main)
