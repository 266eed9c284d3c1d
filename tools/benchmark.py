"""Inference speed of segmentation configs, training-time and deployed, in one interleaved run.

Example (the CPU speed table of docs/benchmarks.md)::

    python tools/benchmark.py configs/pspnet_r50.py configs/pspnet_repvgg_b1g2_fast.py \
        --size 512 1024 --rounds 5 --csv work_dirs/speed.csv

On a GPU (paper Table 8's setting, batch 16 at 713x713, is the default there)::

    python tools/benchmark.py configs/pspnet_r50.py configs/pspnet_repvgg_b1g2_fast.py \
        --device cuda --fp16 --channels-last --treatments eager,graph,compile

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
    TREATMENTS,
    BackboneOnly,
    BenchmarkSettings,
    Case,
    cuda_settings,
    deployed_copy,
    describe_machine,
    format_table,
    matmul_tflops,
    plain_repvgg,
    results_as_dicts,
    run_benchmark,
)
from repvgg_seg.deploy import SegmentorLogits, build_segmentor  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", help="mmseg config files")
    parser.add_argument("--size", nargs=2, type=int, default=(713, 713), metavar=("H", "W"))
    parser.add_argument(
        "-b",
        "--batch",
        type=int,
        default=None,
        help="images per pass (default: 16 on CUDA, 1 on CPU)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
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
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument(
        "--fp16", action="store_true", help="float16 weights and input (or autocast: --autocast)"
    )
    precision.add_argument(
        "--bf16", action="store_true", help="bfloat16 weights and input (or autocast: --autocast)"
    )
    parser.add_argument(
        "--autocast",
        action="store_true",
        help="reach --fp16/--bf16 by autocast over float32 weights instead of casting them",
    )
    parser.add_argument(
        "--tf32",
        choices=("on", "off"),
        default=None,
        help="CUDA: TF32 for float32 convs and matmuls (default off on CUDA, stated in the header)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile every model")
    parser.add_argument(
        "--compile-mode", default="default", help="torch.compile mode (e.g. max-autotune)"
    )
    parser.add_argument(
        "--treatments",
        default=None,
        help="comma-separated, each model timed under each: eager, graph (CUDA graph replay), "
        "compile, compile+graph (default: compile with --compile, else eager)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table as CSV")
    parser.add_argument("--json", type=Path, default=None, help="also write it as JSON")
    return parser.parse_args(argv)


def split_list(text: str | None, allowed: tuple[str, ...], option: str) -> list[str]:
    """A comma-separated option's values, each checked against ``allowed``."""
    values = [v.strip() for v in (text or "").split(",") if v.strip()]
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise SystemExit(f"{option}: unknown {unknown}; use any of {', '.join(allowed)}.")
    return values


def with_treatments(cases: list[Case], treatments: list[str]) -> list[Case]:
    """Each case once per treatment (names suffixed), or as given when none are listed."""
    if not treatments:
        return cases
    return [
        Case(f"{case.name} [{treatment}]", case.module, treatment)
        for case in cases
        for treatment in treatments
    ]


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
    return with_treatments(cases, split_list(args.treatments, TREATMENTS, "--treatments"))


def settings_from(args: argparse.Namespace) -> BenchmarkSettings:
    """The benchmark settings the command line asks for (CUDA defaults: batch 16, TF32 off)."""
    on_cuda = torch.device(args.device).type == "cuda"
    tf32 = {"on": True, "off": False, None: False if on_cuda else None}[args.tf32]
    if tf32 is not None and not on_cuda:
        raise SystemExit("--tf32 applies to CUDA devices only; add --device cuda.")
    try:
        return BenchmarkSettings(
            height=args.size[0],
            width=args.size[1],
            batch=args.batch or (16 if on_cuda else 1),
            warmup=args.warmup,
            rounds=args.rounds,
            channels_last=args.channels_last,
            precision="fp16" if args.fp16 else "bf16" if args.bf16 else "fp32",
            autocast=args.autocast,
            compile=args.compile,
            compile_mode=args.compile_mode,
            device=args.device,
            tf32=tf32,
        )
    except ValueError as error:
        raise SystemExit(f"ERROR: {error}") from error


def describe_run(args: argparse.Namespace, settings: BenchmarkSettings) -> str:
    """The header line: what was timed, how, and on what."""
    precision = settings.precision
    if precision != "fp32":
        precision += " autocast" if settings.autocast else " weights and input"
    layout = "channels_last" if settings.channels_last else "NCHW"
    return (
        f"{args.part}, input {settings.batch}x3x{settings.height}x{settings.width}, {precision}, "
        f"{layout}, {settings.rounds} rounds on {settings.device}\n{describe_machine(settings)}"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = settings_from(args)
    cases = build_cases(args)
    matmul_rate = None
    if settings.is_cuda:
        with cuda_settings(settings):
            matmul_rate = matmul_tflops(settings)
    results = run_benchmark(cases, settings, matmul_rate)
    print(describe_run(args, settings))
    if matmul_rate is not None:
        print(
            f"dense {settings.precision} matmul (8192^3, measured now): {matmul_rate:.0f} TFLOP/s"
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
        summary = {
            "settings": vars(settings),
            "machine": describe_machine(settings),
            "matmul_tflops": matmul_rate,
            "results": rows,
        }
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
