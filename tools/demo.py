"""The five-minute demo: train PSPNet-RepVGG-A0 on synthetic Cityscapes, fuse it, compare.

    make demo            # or: .venv/bin/python tools/demo.py [--iters 400] [--work-dir DIR]

Steps: write synthetic Cityscapes (data/synthetic_cityscapes), evaluate the untrained
model, train configs/pspnet_repvgg_a0_synthetic.py on the CPU, evaluate mIoU, fuse every
RepVGG block (switch_to_deploy on the whole segmentor), evaluate again, and print mIoU
before/after fusion, the largest logit difference and the images/s of both forms. The
training curves (loss, learning rate, val mIoU) go to WORK_DIR/curves.png.
The data are generated scenes: these numbers show the code working, not Cityscapes results.
"""

from __future__ import annotations

import argparse
import os.path as osp
import time

import torch
from mmengine.config import Config
from mmengine.registry import RUNNERS

from repvgg_seg.cli import run_tool
from repvgg_seg.curves import plot_runs, read_run
from repvgg_seg.datasets import make_synthetic_cityscapes
from repvgg_seg.equivalence import compare_logits, strict_float32
from repvgg_seg.reparam import reparameterize_model
from repvgg_seg.runner import claim_work_dir

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, "configs", "pspnet_repvgg_a0_synthetic.py")


@torch.inference_mode()
def val_logits(model: torch.nn.Module, batches: list[dict]) -> list[torch.Tensor]:
    """Decode-head logits for every validation batch."""
    model.eval()
    outputs = []
    for batch in batches:
        data = model.data_preprocessor(batch, False)
        outputs.append(model(data["inputs"], mode="tensor"))
    return outputs


def images_per_second(model: torch.nn.Module, batches: list[dict], repeats: int = 3) -> float:
    """Best of ``repeats`` passes over the validation images (batch 1, whole image)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        val_logits(model, batches)
        best = min(best, time.perf_counter() - start)
    return len(batches) / best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=None, help="training iterations")
    parser.add_argument("--work-dir", default=osp.join(ROOT, "work_dirs", "demo"))
    parser.add_argument("--data-root", default=osp.join(ROOT, "data", "synthetic_cityscapes"))
    args = parser.parse_args(argv)
    started = time.perf_counter()

    make_synthetic_cityscapes(args.data_root, num_train=60, num_val=12, image_size=(256, 128))
    cfg = Config.fromfile(CONFIG)
    cfg.work_dir = args.work_dir
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        cfg[loader].dataset.data_root = args.data_root
    if args.iters is not None:
        cfg.train_cfg.max_iters = args.iters
        cfg.train_cfg.val_interval = args.iters
        cfg.default_hooks.checkpoint.interval = args.iters
        cfg.param_scheduler[0].end = args.iters
    runner = RUNNERS.build(cfg)

    untrained = runner.test()
    # Each demo starts over: an earlier demo's checkpoints are replaced, never mixed in.
    with claim_work_dir(cfg.work_dir, resume=False, resume_from=None, start_over=True):
        runner.train()
    # Next to the checkpoints: this run's loss, LR and val mIoU (its own log folder only).
    title = f"PSPNet RepVGG-A0, synthetic Cityscapes, {cfg.train_cfg.max_iters} iterations"
    curves = plot_runs([read_run(runner.log_dir)], osp.join(args.work_dir, "curves.png"), title)
    trained = runner.test()
    model = runner.model
    batches = list(runner.test_dataloader)
    speed_before = images_per_second(model, batches)
    with strict_float32():
        logits_before = val_logits(model, batches)

    reparameterize_model(model)
    fused = runner.test()
    speed_after = images_per_second(model, batches)
    with strict_float32():
        logits_after = val_logits(model, batches)
    agreement = compare_logits(logits_before[0], logits_after[0])
    for before, after in zip(logits_before[1:], logits_after[1:]):
        agreement = agreement.merge(compare_logits(before, after))

    rows = [
        ("untrained", untrained, None),
        ("trained, training-time blocks", trained, speed_before),
        ("trained, fused (deployed)", fused, speed_after),
    ]
    print(f"\nPSPNet RepVGG-A0 on synthetic Cityscapes ({cfg.train_cfg.max_iters} iterations)")
    print(f"{'model':<32}{'mIoU':>8}{'mAcc':>8}{'aAcc':>8}{'images/s':>10}")
    for name, metrics, speed in rows:
        speed_text = f"{speed:10.1f}" if speed else f"{'':>10}"
        print(
            f"{name:<32}{metrics['mIoU']:8.2f}{metrics['mAcc']:8.2f}{metrics['aAcc']:8.2f}"
            f"{speed_text}"
        )
    print(f"mIoU change from fusion: {abs(fused['mIoU'] - trained['mIoU']):.4f}")
    print(f"fused vs training-time: {agreement.describe()}")
    print(f"fused speed-up: {speed_after / speed_before:.2f}x")
    print(f"training curves: {curves}")
    print(f"wall time: {time.perf_counter() - started:.0f} s (checkpoints: {args.work_dir})")
    agreement.check("fused vs training-time segmentor on the val images")


if __name__ == "__main__":
    run_tool(main)
