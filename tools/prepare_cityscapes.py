"""Creates the ``*_gtFine_labelTrainIds.png`` files that the configs train on.

    python tools/prepare_cityscapes.py data/cityscapes [--nproc 8] [--unknown-ids-to-ignore]

Reads every ``gtFine/<split>/<city>/*_gtFine_labelIds.png`` of the official
gtFine_trainvaltest.zip and writes ``*_gtFine_labelTrainIds.png`` beside it, with the
19 training classes and 255 for ignored ones, mapped through the label table of the official
``cityscapesscripts`` package. A value that is no Cityscapes label id (0-33) stops the
conversion with an error naming the file, unless --unknown-ids-to-ignore maps it to 255; so
does a label file that cannot be decoded. Each output appears whole (written atomically).
See data/README.md.
"""

from __future__ import annotations

import argparse
import functools
import os.path as osp

from mmengine.utils import track_parallel_progress, track_progress

from repvgg_seg.cli import UsageError, run_tool
from repvgg_seg.datasets.labels import convert_label_ids_file, find_label_id_files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_root", help="Cityscapes root (holds leftImg8bit/ and gtFine/)")
    parser.add_argument("--nproc", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--unknown-ids-to-ignore",
        action="store_true",
        help="map values that are no Cityscapes label id to 255 (ignored) with a warning, "
        "instead of stopping with an error",
    )
    args = parser.parse_args(argv)
    gtfine = osp.join(args.data_root, "gtFine")
    if args.nproc < 1:
        raise UsageError(f"--nproc must be at least 1, got {args.nproc}.")
    if not osp.isdir(gtfine):
        raise UsageError(
            f"'{gtfine}' does not exist. Unpack gtFine_trainvaltest.zip into {args.data_root} "
            "first (see data/README.md)."
        )
    sources = find_label_id_files(gtfine)
    if not sources:
        raise UsageError(
            f"No '*_gtFine_labelIds.png' files under '{gtfine}'. Is it the gtFine archive "
            "(gtFine_trainvaltest.zip)? See data/README.md."
        )
    convert = functools.partial(
        convert_label_ids_file, unknown_ids_to_ignore=args.unknown_ids_to_ignore
    )
    try:
        if args.nproc > 1:
            track_parallel_progress(convert, sources, args.nproc)
        else:
            track_progress(convert, sources)
    finally:
        print()  # ends the progress bar's line, so that a message starts on its own
    print(f"wrote {len(sources)} *_gtFine_labelTrainIds.png files under {gtfine}")


if __name__ == "__main__":
    run_tool(main)
