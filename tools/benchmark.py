"""Inference speed of segmentation configs, trained, deployed and per runtime, in one run.

Example (the speed table in docs/benchmarks.md)::

    python tools/benchmark.py configs/pspnet_r50.py configs/pspnet_repvgg_b1g2_fast.py \
        --size 512 1024 --rounds 5 --csv work_dirs/speed.csv

Every deployed config under every CPU runtime and precision (INT8 calibrated on random
inputs: speed does not depend on the values)::

    python tools/benchmark.py configs/pspnet_r50.py configs/pspnet_repvgg_b1g2_fast.py \
        --size 512 1024 --threads 2 --variants deploy \
        --runtimes torch,torch-bf16,onnxruntime,onnxruntime-int8,openvino,openvino-int8

ONNX files beside the config they were exported from (a ``tools/quantize.py`` PTQ file
and a ``tools/qat.py`` one), each run as it is by each ONNX runtime named::

    python tools/benchmark.py configs/pspnet_repvgg_b1g2_fast.py --size 512 1024 \
        --variants deploy --runtimes onnxruntime,openvino \
        --onnx work_dirs/int8/b1g2_int8.onnx work_dirs/qat/b1g2_qat.onnx

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
import logging
from pathlib import Path

import torch

from repvgg_seg.benchmark import (
    RUNTIMES,
    TREATMENTS,
    VARIANTS,
    BenchmarkRequest,
    check_report_paths,
    parse_choices,
    run_request,
    settings_for_device,
    write_report_files,
)
from repvgg_seg.cli import UsageError, load_config, run_tool
from repvgg_seg.deploy.autotune import WINOGRAD_MODES


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
        "--onnx",
        nargs="+",
        type=Path,
        default=[],
        metavar="FILE",
        help="also time these ONNX files of the first config's model (float32, or INT8 from "
        "tools/quantize.py or tools/qat.py) as they are, each in each ONNX runtime --runtimes "
        "names (onnxruntime, openvino; their -int8 names run the same engine); rows are "
        "named by the config and the file, GMACs are the config's deployed model's",
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


def request_from(args: argparse.Namespace) -> BenchmarkRequest:
    """The benchmark the command line asks for (configs loaded, every value checked)."""
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}.")
    settings = settings_for_device(
        args.device,
        batch=args.batch,
        tf32={"on": True, "off": False, None: None}[args.tf32],
        height=args.size[0],
        width=args.size[1],
        warmup=args.warmup,
        rounds=args.rounds,
        channels_last=args.channels_last,
        precision="fp16" if args.fp16 else "bf16" if args.bf16 else "fp32",
        autocast=args.autocast,
        compile=args.compile,
        compile_mode=args.compile_mode,
    )
    return BenchmarkRequest(
        settings=settings,
        configs={Path(path).stem: load_config(path) for path in args.configs},
        variants=parse_choices(args.variants, VARIANTS, "--variants"),
        runtimes=parse_choices(args.runtimes, tuple(RUNTIMES), "--runtimes"),
        treatments=parse_choices(args.treatments, TREATMENTS, "--treatments"),
        winograd=args.winograd,
        part=args.part,
        plain_repvgg=tuple(args.plain_repvgg),
        calibration_inputs=args.calib_inputs,
        peak_size=args.peak_size,
        onnx_files=tuple(args.onnx),
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    request = request_from(args)
    check_report_paths(args.csv, args.json)  # before the run: minutes of it are not lost
    # Progress of this package's steps; third-party INFO (the ONNX exporter's graph passes)
    # stays off the console.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("repvgg_seg").setLevel(logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run_request(request)
    print(report.text())
    write_report_files(report.results, report.record, args.csv, args.json)


if __name__ == "__main__":
    run_tool(main)
