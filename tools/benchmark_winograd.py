"""Direct conv vs Winograd F(4x4,3x3), layer by layer, in one interleaved run per layer.

Example (the layer table in README.md: the 3x3 convs of PSPNet-RepVGG-B1g2-fast,
PSPNet-R50-D8 and the PSP head at a 512x1024 input)::

    python tools/benchmark_winograd.py --channels-last

A layer is ``CIN,COUT,H,W[,GROUPS[,DILATION]]`` (3x3, stride 1, padding = dilation). For
each it prints both times, the speed-up and the largest difference of the outputs relative
to the largest output (float32 round-off; the direct conv's own round-off is of the same
order).
"""

from __future__ import annotations

import argparse
import logging

import torch
from torch import nn

from repvgg_seg.benchmark import BenchmarkSettings, Case, run_benchmark
from repvgg_seg.cli import UsageError, run_tool
from repvgg_seg.deploy.winograd import WinogradConv2d

DEFAULT_LAYERS = (
    "128,128,128,256",  # RepVGG-B1g2 stage 1 (below the channel threshold)
    "256,256,64,128",  # B1g2 stage 2, R50-D8 stage 3 (dilation 2 there)
    "256,256,64,128,2",  # B1g2 stage 2, grouped layers
    "512,512,64,128",  # B1g2-fast stage 3
    "512,512,64,128,2",  # B1g2-fast stage 3, grouped layers
    "512,512,64,128,2,2",  # B1g2-fast stage 3, last (dilated) layers
    "256,256,64,128,1,2",  # R50-D8 stage 3
    "512,512,64,128,1,4",  # R50-D8 stage 4
    "512,2048,64,128,1,4",  # B1g2-fast stage 4
    "4096,512,64,128",  # PSP head bottleneck (both backbones)
)


def parse_layer(spec: str) -> tuple[int, int, int, int, int, int]:
    try:
        values = [int(v) for v in spec.split(",")]
    except ValueError:
        values = []
    if len(values) not in (4, 5, 6) or min(values) < 1:
        raise UsageError(
            f"Layer {spec!r}: expected CIN,COUT,H,W[,GROUPS[,DILATION]] with positive integers."
        )
    values += [1] * (6 - len(values))
    cin, cout, _, _, groups, _ = values
    if cin % groups or cout % groups:
        raise UsageError(f"Layer {spec!r}: channels must be divisible by groups ({groups}).")
    return tuple(values)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("layers", nargs="*", default=list(DEFAULT_LAYERS))
    parser.add_argument("-b", "--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = [parse_layer(spec) for spec in args.layers]

    print(
        f"batch {args.batch}, fp32, {'channels_last' if args.channels_last else 'NCHW'}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {args.rounds} rounds"
    )
    print(
        "| layer (cin,cout,h,w,groups,dilation) | direct ms | winograd ms | speed-up | rel. diff |"
    )
    print("|---|---|---|---|---|")
    torch.manual_seed(0)
    for cin, cout, height, width, groups, dilation in layers:
        conv = nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, groups=groups)
        winograd = WinogradConv2d(cin, cout, 3, padding=dilation, dilation=dilation, groups=groups)
        winograd.load_state_dict(conv.state_dict())
        settings = BenchmarkSettings(
            height=height,
            width=width,
            batch=args.batch,
            warmup=args.warmup,
            rounds=args.rounds,
            channels_last=args.channels_last,
            channels=cin,
        )
        direct, fast = run_benchmark([Case("direct", conv), Case("winograd", winograd)], settings)
        image = torch.randn(args.batch, cin, height, width)
        with torch.no_grad():
            reference = conv(image)
            difference = (winograd(image) - reference).abs().max() / reference.abs().max()
        print(
            f"| {cin},{cout},{height},{width},{groups},{dilation} | {direct.median_ms:.1f} "
            f"| {fast.median_ms:.1f} | {fast.relative_speed:.2f}x | {difference:.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    run_tool(main)
