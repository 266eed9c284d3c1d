"""Inference speed of segmentation configs, trained, deployed and per runtime, in one run.

Example (the speed table in docs/benchmarks.md)::

    python tools/benchmark.py configs/pspnet_r50.py configs/pspnet_repvgg_b1g2_fast.py \
        --size 512 1024 --rounds 5 --csv work_dirs/speed.csv

Every deployed config under every CPU runtime and precision (INT8 calibrated on random
inputs: speed does not depend on the values)::

    python tools/benchmark.py configs/pspnet_r50.py configs/pspnet_repvgg_b1g2_fast.py \
        --size 512 1024 --threads 2 --variants deploy \
        --runtimes torch,torch-bf16,onnxruntime,onnxruntime-int8,openvino,openvino-int8

On a GPU (paper Table 8's setting, batch 16 at 713x713, is the default there)::

    python tools/benchmark.py configs/pspnet_r50.py configs/pspnet_repvgg_b1g2_fast.py \
        --device cuda --fp16 --channels-last --treatments eager,graph,compile

The first case is the reference of the "speed vs first" column. Times are medians over
``--rounds`` rounds in which every case runs once; compare only numbers from one run. The
header measures the host's peak rates in the same run (CPU: float32, bf16 and int8; CUDA:
the dense matmul in the run's precision) and each row states its share of its precision's.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch

from repvgg_seg.atomic_io import write_atomically
from repvgg_seg.benchmark import (
    RUNTIMES,
    TREATMENTS,
    VARIANTS,
    BenchmarkSettings,
    Case,
    CpuPeakSampler,
    RuntimeRunners,
    cuda_settings,
    describe_machine,
    format_table,
    matmul_tflops,
    plain_repvgg,
    results_as_dicts,
    run_benchmark,
    segmentor_cases,
    with_treatments,
)
from repvgg_seg.cli import UsageError, format_options, load_config, run_tool
from repvgg_seg.deploy.autotune import AUTOTUNER, WINOGRAD_MODES
from repvgg_seg.loader import build_segmentor


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
        help="comma-separated, for the torch runtime: 'train' (as trained), 'deploy' (fused, "
        "direct convs), 'winograd' (fused, eligible 3x3 convs by Winograd F(4x4,3x3) as "
        "--winograd says, as tools/deploy.py writes it); default all three",
    )
    parser.add_argument(
        "--winograd",
        choices=WINOGRAD_MODES,
        default="auto",
        help="the 'winograd' variant: 'on' everywhere it applies, 'auto' (default) per conv "
        "shape where it is faster on this CPU (timed on first use), 'off' drops the variant",
    )
    parser.add_argument(
        "--runtimes",
        default="torch",
        help=f"comma-separated, each config timed under each (CPU): {', '.join(RUNTIMES)}; "
        "'torch' times --variants in the run's precision, the others the deployed model "
        "(default torch)",
    )
    parser.add_argument(
        "--calib-inputs",
        type=int,
        default=2,
        help="random inputs that calibrate the INT8 runtimes (default 2; speed does not depend "
        "on them)",
    )
    parser.add_argument(
        "--peak-size",
        type=int,
        default=2048,
        help="CPU: side of the square matmuls that measure the host's peak rates (default 2048)",
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
        raise UsageError(f"{option}: unknown {unknown}; use any of {format_options(allowed)}.")
    return values


def build_cases(args: argparse.Namespace) -> list[Case]:
    """Every config's cases (:func:`segmentor_cases`), the plain networks, the treatments."""
    treatments = split_list(args.treatments, TREATMENTS, "--treatments")
    runtimes = split_list(args.runtimes, tuple(RUNTIMES), "--runtimes")
    if set(runtimes) - {"torch"} and (args.part == "backbone" or args.device != "cpu"):
        raise UsageError(
            f"--runtimes {args.runtimes}: runtimes other than torch time the whole deployed "
            "segmentor on CPU; drop --part backbone / --device, or use --runtimes torch."
        )
    variants = split_list(args.variants, VARIANTS, "--variants")
    cases = []
    for config in args.configs:
        trained = build_segmentor(load_config(config))
        name = Path(config).stem
        cases += segmentor_cases(name, trained, variants, runtimes, args.winograd, args.part)
    for spec in args.plain_repvgg:
        arch, _, mode = spec.partition(":")
        cases.append(
            Case(f"plain RepVGG-{arch}-{mode or 'fast'}", plain_repvgg(arch, mode or "fast"))
        )
    if not cases:
        raise UsageError("Nothing to benchmark: give configs and/or --plain-repvgg.")
    torch_cases = with_treatments([c for c in cases if c.runtime == "torch"], treatments)
    return torch_cases + [c for c in cases if c.runtime != "torch"]


def settings_from(args: argparse.Namespace) -> BenchmarkSettings:
    """The benchmark settings the command line asks for (CUDA defaults: batch 16, TF32 off)."""
    on_cuda = torch.device(args.device).type == "cuda"
    tf32 = {"on": True, "off": False, None: False if on_cuda else None}[args.tf32]
    if tf32 is not None and not on_cuda:
        raise UsageError("--tf32 applies to CUDA devices only; add --device cuda.")
    if args.calib_inputs < 1 or args.peak_size < 16:
        raise UsageError(
            f"--calib-inputs must be >= 1 and --peak-size >= 16, got {args.calib_inputs} and "
            f"{args.peak_size}."
        )
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


def winograd_summary() -> str | None:
    """How many conv shapes ``auto`` Winograd found faster (None when nothing was tuned)."""
    decisions = AUTOTUNER.decisions.values()
    if not decisions:
        return None
    faster = sum(winograd < direct for direct, winograd in decisions)
    return (
        f"Winograd auto: faster than the direct conv for {faster} of {len(decisions)} conv shapes"
    )


def write_outputs(args: argparse.Namespace, summary: dict) -> None:
    """The table as CSV and the whole run as JSON, where asked for (written atomically)."""
    rows = summary["results"]
    if args.csv:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(args.csv, lambda file: file.write(text.getvalue().encode()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(summary, indent=2).encode()
        write_atomically(args.json, lambda file: file.write(data))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Progress of this package's steps; third-party INFO (the ONNX exporter's graph passes)
    # stays off the console.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("repvgg_seg").setLevel(logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = settings_from(args)
    cases = build_cases(args)
    matmul_rate, sampler = None, None
    if settings.is_cuda:
        with cuda_settings(settings):
            matmul_rate = matmul_tflops(settings)
    else:
        sampler = CpuPeakSampler(args.peak_size, conv_size=max(8, args.peak_size // 32))
    with RuntimeRunners(calibration_inputs=args.calib_inputs) as runners:
        results = run_benchmark(cases, settings, matmul_rate, runners=runners, peak_sampler=sampler)
    peaks = sampler and sampler.peaks()
    print(describe_run(args, settings))
    if matmul_rate is not None:
        print(
            f"dense {settings.precision} matmul (8192^3, measured now): {matmul_rate:.0f} TFLOP/s"
        )
    for line in (peaks and peaks.describe(), winograd_summary()):
        if line:
            print(line)
    print(format_table(results))
    write_outputs(
        args,
        {
            "settings": vars(settings),
            "machine": describe_machine(settings),
            "matmul_tflops": matmul_rate,
            "cpu_peaks_gmacs": peaks and asdict(peaks),
            "results": results_as_dicts(results),
        },
    )


if __name__ == "__main__":
    run_tool(main)
