"""The QARepVGG quantization study: float vs INT8 accuracy of RepVGG, QARepVGG and ResNet.

    python tools/quantization_study.py [--work-dir work_dirs/quantization_study]
        [--epochs 40] [--seg-iters 200] [--skip-classifiers] [--skip-segmentors]

Classifiers, on scikit-learn's digits (1797 real 8x8 handwritten digits, shipped with the
package, written as 16x16 RGB images; every 5th image is val):
RepVGG-A0 and QARepVGG-A0 pretrained by ``tools/pretrain_imagenet.py`` (each with its own
default preset), ResNet-18 (torchvision) by the same data, optimizer and schedule in this
process (the pretraining tool builds only RepVGG-family models). Each deployed classifier is
exported to ONNX and quantized by ONNX Runtime (static QDQ S8S8, MinMax calibration on 32
train images, per tensor and per channel: :mod:`repvgg_seg.quantize.classifier`).

Segmentors: PSPNet-A0 RepVGG and QARepVGG on synthetic Cityscapes
(``configs/pspnet_{repvgg,qarepvgg}_a0_synthetic.py``, ``tools/train.py``), then
``tools/quantize.py`` per tensor and per channel.

Every command it runs is printed first; the table at the end is what docs/qarepvgg.md
reports. Small data on a small CPU: this shows how the blocks behave here, not ImageNet.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from repvgg_seg.benchmark.machine import cpu_info
from repvgg_seg.cli import run_tool
from repvgg_seg.pretrain.data import build_datasets, build_loaders
from repvgg_seg.pretrain.engine import TrainingState, evaluate, train_one_epoch
from repvgg_seg.pretrain.recipe import build_lr_scheduler, build_optimizer, scaled_lr
from repvgg_seg.quantize.classifier import quantize_classifier
from repvgg_seg.weights import load_classifier

ROOT = Path(__file__).resolve().parents[1]
# The digits are 8x8: 16x16 inputs keep every pixel and the CPU cost small.
IMAGE_SIZE = 16
BATCH = 32
LR_PER_256 = 0.2  # 0.025 at batch 32
# One thread per process: on a shared 2-core machine a second one mostly waits on the first.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
# (--model, extra arguments): each model with its default preset, and QARepVGG-A0 with
# RepVGG's (simple) too, so the block and the recipe can be told apart.
CLASSIFIERS = {
    "RepVGG-A0": ("RepVGG-A0",),
    "QARepVGG-A0": ("QARepVGG-A0",),
    "QARepVGG-A0 (recipe simple)": ("QARepVGG-A0", "--recipe", "simple"),
}
SEGMENTORS = ("pspnet_repvgg_a0_synthetic", "pspnet_qarepvgg_a0_synthetic")
logger = logging.getLogger("quantization_study")


def run(tool: str, *args: object) -> None:
    """Runs ``tools/<tool>.py`` as a user would, after printing its command line."""
    command = [sys.executable, f"tools/{tool}.py", *map(str, args)]
    print("$ OMP_NUM_THREADS=1 " + shlex.join(command), flush=True)
    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, **ONE_THREAD})


def write_digits(root: Path) -> Path:
    """scikit-learn's digits as an ImageFolder of 16x16 RGB PNGs (every 5th image in val)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        split = "val" if index % 5 == 0 else "train"
        folder = root / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        gray = Image.fromarray((pixels * (255 / 16)).astype(np.uint8))
        gray.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR).convert("RGB").save(
            folder / f"{index}.png"
        )
    return root


def sizes() -> list[str]:
    return [
        f"--{name}={IMAGE_SIZE}" for name in ("train-crop-size", "val-resize-size", "val-crop-size")
    ]


def pretrain(data: Path, model: tuple[str, ...], out: Path, epochs: int) -> nn.Module:
    """``tools/pretrain_imagenet.py --model MODEL...``; returns its deployed classifier."""
    if not (out / "model_deploy.pth").exists():
        run(
            "pretrain_imagenet",
            "--data-path",
            data,
            "--model",
            *model,
            "--epochs",
            epochs,
            "-b",
            BATCH,
            "-j",
            0,
            "--lr",
            LR_PER_256,
            "--device",
            "cpu",
            "--output-dir",
            out,
            "--print-freq",
            1000,
            *sizes(),
        )
    return load_classifier(out / "model_deploy.pth")


def train_resnet18(data: Path, epochs: int) -> nn.Module:
    """ResNet-18 on the same data, optimizer and schedule as the 'simple' preset."""
    from torchvision.models import resnet18

    print(f"# ResNet-18 (torchvision), {epochs} epochs, in this process", flush=True)
    torch.manual_seed(0)
    model = resnet18(num_classes=10)
    splits = build_datasets(data, IMAGE_SIZE, IMAGE_SIZE, IMAGE_SIZE)
    train_loader, val_loader, _ = build_loaders(splits, BATCH, 0, 1, 0, seed=0)
    optimizer = build_optimizer(model, scaled_lr(LR_PER_256, BATCH), 0.9, 1e-4)
    state = TrainingState(
        model=model,
        optimizer=optimizer,
        lr_scheduler=build_lr_scheduler(optimizer, epochs, len(train_loader), 0),
        scaler=None,
        model_ema=None,
        train_model=model,
        criterion=nn.CrossEntropyLoss(),
        device=torch.device("cpu"),
    )
    for epoch in range(epochs):
        train_one_epoch(state, train_loader, epoch, epochs, print_freq=1000)
    evaluate(model, val_loader, torch.device("cpu"))
    return model.eval()


def image_arrays(data: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Every image of a split through the evaluation transform, and the labels."""
    splits = build_datasets(data, IMAGE_SIZE, IMAGE_SIZE, IMAGE_SIZE)
    dataset = splits.train if split == "train" else splits.val
    # The val transform for both: calibration sees images as deployment does.
    dataset.transform = splits.val.transform
    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(images).numpy(), np.array(labels)


def classifier_rows(work_dir: Path, epochs: int) -> list[tuple[str, str, float, float]]:
    data = write_digits(work_dir / "digits")
    models = {
        name: pretrain(data, model, work_dir / name.replace(" (recipe ", "_").rstrip(")"), epochs)
        for name, model in CLASSIFIERS.items()
    }
    models["ResNet-18"] = train_resnet18(data, epochs)
    train_images, _ = image_arrays(data, "train")
    rng = np.random.default_rng(0)
    calibration = [train_images[i : i + 1] for i in rng.choice(len(train_images), 32, False)]
    images, labels = image_arrays(data, "val")
    rows = []
    for name, model in models.items():
        with tempfile.TemporaryDirectory() as scratch:
            results = quantize_classifier(
                model, IMAGE_SIZE, calibration, images, labels, Path(scratch), num_threads=1
            )
        rows += [(name, r.name, r.top1, r.agreement) for r in results]
    return rows


def segmentor_rows(work_dir: Path, iters: int) -> list[tuple[str, str, float, float]]:
    data = work_dir / "synthetic_cityscapes"
    if not data.exists():
        run(
            "make_synthetic_cityscapes",
            data,
            "--num-train",
            60,
            "--num-val",
            12,
            "--size",
            256,
            128,
        )
    roots = [
        f"{loader}.dataset.data_root={data}"
        for loader in ("train_dataloader", "val_dataloader", "test_dataloader")
    ]
    schedule = [
        f"train_cfg.max_iters={iters}",
        f"train_cfg.val_interval={iters}",
        f"default_hooks.checkpoint.interval={iters}",
        f"param_scheduler.0.end={iters}",
    ]
    rows = []
    for name in SEGMENTORS:
        config, run_dir = f"configs/{name}.py", work_dir / name
        checkpoint = run_dir / f"iter_{iters}.pth"
        if not checkpoint.exists():
            run(
                "train",
                config,
                "--work-dir",
                run_dir,
                "--overwrite-work-dir",
                "--cfg-options",
                *roots,
                *schedule,
            )
        for flag, form in (("--no-per-channel", "per-tensor"), ("--per-channel", "per-channel")):
            out = run_dir / f"int8_{form}"
            report = out / f"{name}_int8.json"
            if not report.exists():
                run(
                    "quantize",
                    config,
                    checkpoint,
                    out,
                    flag,
                    "--calib-images",
                    8,
                    "--eval-images",
                    12,
                    "--max-miou-drop",
                    100,
                    "--cfg-options",
                    *roots,
                )
            evaluation = json.loads(report.read_text())["evaluation"]
            if form == "per-tensor":
                rows.append((name, "float", evaluation["float32"]["mIoU"], 100.0))
            agreement = evaluation["pixel_agreement_percent"]
            rows.append((name, f"int8 {form}", evaluation["int8"]["mIoU"], agreement))
    return rows


def print_table(title: str, metric: str, rows: list[tuple[str, str, float, float]]) -> None:
    print(f"\n{title:<30}{'form':<18}{metric:>10}{'agrees with float %':>22}")
    for model, form, value, agreement in rows:
        print(f"{model:<30}{form:<18}{value:10.2f}{agreement:22.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=ROOT / "work_dirs" / "quantization_study")
    parser.add_argument("--epochs", type=int, default=40, help="classifier epochs")
    parser.add_argument("--seg-iters", type=int, default=200, help="PSPNet iterations")
    parser.add_argument("--skip-classifiers", action="store_true")
    parser.add_argument("--skip-segmentors", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    cpu, flags = cpu_info()
    print(f"# host: {cpu} ({', '.join(flags)}), one thread per process, torch {torch.__version__}")
    if not args.skip_classifiers:
        rows = classifier_rows(args.work_dir, args.epochs)
        print_table("classifier (digits val)", "top-1 %", rows)
    if not args.skip_segmentors:
        rows = segmentor_rows(args.work_dir, args.seg_iters)
        print_table("PSPNet (synthetic val)", "mIoU", rows)


if __name__ == "__main__":
    run_tool(main)
