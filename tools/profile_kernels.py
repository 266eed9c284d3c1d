"""Which kernels a segmentor's forward pass spends its time in, as trained and as deployed.

Example (why a folded ResNet is slower in fp16 channels-last on a GPU)::

    python tools/profile_kernels.py configs/pspnet_r50.py --device cuda --fp16 --channels-last

Prints, for each variant, the kernels (CUDA) or operators (CPU) with the largest total time
over ``--passes`` forward passes, after a warm-up with cuDNN's autotuner on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from repvgg_seg.benchmark import (
    cuda_settings,
    deployed_copy,
    describe_machine,
    make_forward,
    prepare_module,
    settings_for_device,
)
from repvgg_seg.cli import load_config, run_tool
from repvgg_seg.deploy import SegmentorLogits
from repvgg_seg.loader import build_segmentor


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="mmseg config file")
    parser.add_argument("--variants", default="train,deploy", help="train and/or deploy")
    parser.add_argument("--size", nargs=2, type=int, default=(713, 713), metavar=("H", "W"))
    parser.add_argument("-b", "--batch", type=int, default=None, help="default 16 CUDA, 1 CPU")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fp16", action="store_true", help="float16 weights and input")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--passes", type=int, default=3, help="profiled forward passes")
    parser.add_argument("--top", type=int, default=15, help="rows per table")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or set(variants) - {"train", "deploy"}:
        parser.error(f"--variants {args.variants!r}: pass train, deploy or train,deploy")
    args.variants = variants
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = settings_for_device(
        args.device,
        batch=args.batch,
        height=args.size[0],
        width=args.size[1],
        channels_last=args.channels_last,
        precision="fp16" if args.fp16 else "fp32",
    )
    on_cuda = settings.is_cuda
    cfg = load_config(args.config)
    print(describe_machine(settings))
    trained = build_segmentor(cfg)
    models = {"train": trained}
    if "deploy" in args.variants:
        models["deploy"] = deployed_copy(trained)
    image = torch.randn(settings.batch, 3, settings.height, settings.width)
    image = image.to(settings.device, settings.dtype)
    if settings.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    activity = ProfilerActivity.CUDA if on_cuda else ProfilerActivity.CPU
    sort_key = "self_device_time_total" if on_cuda else "self_cpu_time_total"
    for variant in args.variants:
        module = prepare_module(SegmentorLogits(models[variant]), settings)
        forward = make_forward(module, image, "eager", settings)
        with cuda_settings(settings) if on_cuda else torch.no_grad():
            for _ in range(2):
                forward()
            if on_cuda:
                torch.cuda.synchronize()
            with profile(activities=[activity]) as prof:
                for _ in range(args.passes):
                    forward()
                if on_cuda:
                    torch.cuda.synchronize()
        print(f"\n{Path(args.config).stem} ({variant}), {args.passes} passes")
        print(
            prof.key_averages().table(
                sort_by=sort_key, row_limit=args.top, max_name_column_width=70
            )
        )


if __name__ == "__main__":
    run_tool(main)
