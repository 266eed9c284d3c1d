"""Pretrain a RepVGG classifier on ImageNet with the paper's recipes.

One process::

    python tools/pretrain_imagenet.py --data-path /data/imagenet --model RepVGG-A0 \
        --output-dir work_dirs/pretrain_a0

Eight GPUs (``-b`` is per process, so the global batch here is 256)::

    torchrun --nproc_per_node 8 tools/pretrain_imagenet.py --data-path /data/imagenet \
        --model RepVGG-B2 --recipe heavy -b 32 --amp --output-dir work_dirs/pretrain_b2

Exit status: 0 done, 2 bad input (arguments, data: an unreadable image is named, also when a
DataLoader worker read it), 1 when the fused classifier differs from the trained one (every
checkpoint is written by then; only the deployed file is withheld), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os

from repvgg_seg.cli import run_tool
from repvgg_seg.models.arch import ARCHS
from repvgg_seg.pretrain import RECIPES, PretrainConfig, run_pretraining
from repvgg_seg.pretrain.data import AUTO_AUGMENT_POLICIES

RECIPE_DEFAULT = "default: from --recipe"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--data-path", required=True, help="ImageFolder root with train/ and val/")
    add(
        "--model",
        default="A0",
        help=f"variant: {', '.join(ARCHS)} (or RepVGG-B2); QARepVGG blocks: QARepVGG-B2",
    )
    add(
        "--recipe",
        choices=list(RECIPES),
        help="paper preset (default: the paper's for --model: qarepvgg for QARepVGG-*; heavy "
        "for B3, B3g2, B3g4; simple for the others, B2 included)",
    )
    add("-b", "--batch-size", type=int, default=32, help="images per process per step")
    add("--epochs", type=int, help=RECIPE_DEFAULT)
    add("-j", "--workers", type=int, default=8, help="data loading workers per process")
    add("--lr", type=float, help=f"LR per 256 images, scaled linearly ({RECIPE_DEFAULT})")
    add("--momentum", type=float, help=RECIPE_DEFAULT)
    add("--wd", "--weight-decay", dest="wd", type=float, help=f"kernels only; {RECIPE_DEFAULT}")
    add("--label-smoothing", type=float, help=RECIPE_DEFAULT)
    add("--mixup-alpha", type=float, help=f"0 disables mixup; {RECIPE_DEFAULT}")
    add("--auto-augment", choices=AUTO_AUGMENT_POLICIES, help=RECIPE_DEFAULT)
    add("--lr-warmup-epochs", type=int, help=RECIPE_DEFAULT)
    add("--interpolation", choices=["bilinear", "bicubic"], help=RECIPE_DEFAULT)
    add("--color-jitter", type=float, help=f"only without --auto-augment; {RECIPE_DEFAULT}")
    add("--random-erase", dest="random_erasing", type=float, help=f"p; {RECIPE_DEFAULT}")
    add("--lr-1x1-scale", type=float, help=f"QARepVGG's bare 1x1 kernels; {RECIPE_DEFAULT}")
    add("--amp", action="store_true", help="mixed precision (fp16 on CUDA, bf16 on CPU)")
    add("--model-ema", action="store_true", help="also keep and evaluate a weight EMA")
    add("--model-ema-steps", type=int, default=32, help="EMA update period in steps")
    add("--model-ema-decay", type=float, default=0.9999, help="EMA decay per step")
    add("--resume", help="training checkpoint to continue (or to evaluate with --test-only)")
    add("--test-only", action="store_true", help="only evaluate --resume on val/")
    add("--output-dir", help="where checkpoints and metrics.jsonl go (none: write nothing)")
    add("--train-crop-size", type=int, default=224)
    add("--val-resize-size", type=int, default=256)
    add("--val-crop-size", type=int, default=224)
    add("--seed", type=int, default=0)
    add("--print-freq", type=int, default=10, help="log every N iterations")
    add("--device", help="cuda or cpu (default: cuda when available)")
    add("--stop-after-epoch", type=int, help="stop after N epochs; continue with --resume")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
    )
    config = PretrainConfig(**vars(args))
    resolved = config.resolved()
    source = "--recipe" if args.recipe else f"the paper's preset for {resolved.model_label}"
    logging.getLogger("pretrain_imagenet").info(
        "Recipe: %s (%s): %d epochs, label smoothing %g, mixup alpha %g, AutoAugment %s.",
        resolved.recipe,
        source,
        resolved.epochs,
        resolved.label_smoothing,
        resolved.mixup_alpha,
        resolved.auto_augment,
    )
    run_pretraining(config)


if __name__ == "__main__":
    run_tool(main)
