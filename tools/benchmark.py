"""Inference speed of segmentation configs, training-time and deployed, in one interleaved run.

Example (the README speed table)::

    python tools/benchmark.py configs/pspnet_r50.py configs/pspnet_repvgg_b1g2_fast.py \
        --size 512 1024 --rounds 5 --csv work_dirs/speed.csv

The first case is the reference of the "speed vs first" column. Times are medians over
``--rounds`` rounds in which every case runs once; compare only numbers from one run.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repvgg_seg.benchmark import (  # noqa: E402
    BackboneOnly,
    BenchmarkSettings,
    Case,
    deployed_copy,
    format_table,
    plain_repvgg,
    results_as_dicts,
    run_benchmark,
)
from repvgg_seg.deploy import SegmentorLogits, build_segmentor  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", help="mmseg config files")
    parser.add_argument("--size", nargs=2, type=int, default=(713, 713), metavar=("H", "W"))
    parser.add_argument("-b", "--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes per case")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds")
    parser.add_argument(
        "--variants",
        default="train,deploy,winograd",
        help="comma-separated: 'train' (as trained), 'deploy' (fused, direct convs), "
        "'winograd' (fused, eligible 3x3 convs by Winograd F(4x4,3x3), as tools/deploy.py "
        "writes it); default all three",
    )
    parser.add_argument(
        "--part", choices=("segmentor", "backbone"), default="segmentor", help="what to time"
    )
    parser.add_argument(
        "--plain-repvgg",
        action="append",
        default=[],
        metavar="ARCH[:MODE]",
        help="also time a plain Conv2d+ReLU RepVGG (official-style deployed model), e.g. "
        "B1g2:fast; compare it with --part backbone",
    )
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="CPU autocast to bfloat16")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table as CSV")
    parser.add_argument("--json", type=Path, default=None, help="also write it as JSON")
    return parser.parse_args(argv)


def build_cases(args: argparse.Namespace) -> list[Case]:
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - {"train", "deploy", "winograd"}
    if unknown:
        raise SystemExit(
            f"--variants: unknown {sorted(unknown)}; use 'train', 'deploy' and/or 'winograd'."
        )
    wrap = BackboneOnly if args.part == "backbone" else SegmentorLogits
    cases = []
    for config in args.configs:
        if not Path(config).is_file():
            raise SystemExit(f"Config {config!r} does not exist.")
        trained = build_segmentor(config)
        stem = Path(config).stem
        if "train" in variants:
            cases.append(Case(f"{stem} (train)", wrap(trained)))
        if "deploy" in variants:
            cases.append(Case(f"{stem} (deploy)", wrap(deployed_copy(trained))))
        if "winograd" in variants:
            model = deployed_copy(trained, winograd=True)
            cases.append(Case(f"{stem} (deploy, winograd)", wrap(model)))
    for spec in args.plain_repvgg:
        arch, _, mode = spec.partition(":")
        cases.append(
            Case(f"plain RepVGG-{arch}-{mode or 'fast'}", plain_repvgg(arch, mode or "fast"))
        )
    if not cases:
        raise SystemExit("Nothing to benchmark: give configs and/or --plain-repvgg.")
    return cases


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = BenchmarkSettings(
        height=args.size[0],
        width=args.size[1],
        batch=args.batch,
        warmup=args.warmup,
        rounds=args.rounds,
        channels_last=args.channels_last,
        bf16=args.bf16,
        compile=args.compile,
    )
    results = run_benchmark(build_cases(args), settings)
    precision = "bf16 autocast" if args.bf16 else "fp32"
    layout = "channels_last" if args.channels_last else "NCHW"
    print(
        f"{args.part}, input {args.batch}x3x{args.size[0]}x{args.size[1]}, {precision}, {layout}"
        f"{', compiled' if args.compile else ''}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {args.rounds} rounds"
    )
    print(format_table(results))
    rows = results_as_dicts(results)
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"settings": vars(settings), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
