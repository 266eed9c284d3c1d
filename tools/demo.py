"""The five-minute demo: train PSPNet-RepVGG-A0 on synthetic Cityscapes, fuse it, compare.

    make demo            # or: .venv/bin/python tools/demo.py [--iters 400] [--work-dir DIR]

Steps: write synthetic Cityscapes (data/synthetic_cityscapes), evaluate the untrained
model, train configs/pspnet_repvgg_a0_synthetic.py on the CPU, evaluate mIoU, fuse every
RepVGG block (switch_to_deploy on the whole segmentor), evaluate again, and print mIoU
before/after fusion, the largest logit difference and the images/s of both forms. The
training curves (loss, learning rate, val mIoU) go to WORK_DIR/curves.png. An earlier
demo's work dir is started over; one holding another run (or files no tool wrote) is refused
unless --overwrite-work-dir (which still never deletes a file no tool wrote).
The data are generated scenes: these numbers show the code working, not Cityscapes results.
"""

from __future__ import annotations

import argparse
import dataclasses
import os.path as osp
import time

import torch
from mmengine.config import Config
from mmengine.registry import RUNNERS

from repvgg_seg.cli import run_tool
from repvgg_seg.curves import plot_runs, read_run
from repvgg_seg.datasets import make_synthetic_cityscapes
from repvgg_seg.dir_lock import TRAINING
from repvgg_seg.equivalence import compare_logits, strict_float32
from repvgg_seg.reparam import reparameterize_model
from repvgg_seg.runner import claim_work_dir
from repvgg_seg.runner.claim import config_dump_name, record_config_dump
from repvgg_seg.work_dir import START_OVER_FLAG, written_only_by

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, "configs", "pspnet_repvgg_a0_synthetic.py")
CURVES = "curves.png"
# A training's lock; the demo's files are recorded as the demo's, so that a later demo
# starts over in its own work dir without asking, and never in another run's.
DEMO = dataclasses.replace(TRAINING, tag="demo")


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
    parser.add_argument(
        START_OVER_FLAG,
        dest="overwrite_work_dir",
        action="store_true",
        help="start over in a work dir that holds another run's checkpoints (deleted first); "
        "an earlier demo's are replaced without it",
    )
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
    # Claimed before the runner is built (it writes its config there): a work dir holding
    # another run, or files no tool wrote, is refused; an earlier demo's is started over.
    start_over = args.overwrite_work_dir or written_only_by(args.work_dir, DEMO.writer)
    outputs = [name for name in (config_dump_name(cfg), CURVES) if name]
    with claim_work_dir(cfg.work_dir, False, None, start_over, outputs=outputs, role=DEMO):
        runner = RUNNERS.build(cfg)
        record_config_dump(cfg)
        untrained = runner.test()
        runner.train()
        # Next to the checkpoints: this run's loss, LR and val mIoU (its own log folder only).
        title = f"PSPNet RepVGG-A0, synthetic Cityscapes, {cfg.train_cfg.max_iters} iterations"
        curves = plot_runs([read_run(runner.log_dir)], osp.join(args.work_dir, CURVES), title)
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
