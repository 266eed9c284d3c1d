"""RepVGG-A0 vs QARepVGG-A0 on digits: an LR sweep, then float and INT8 over seeds.

    python experiments/quantization_study.py [--work-dir work_dirs/quantization_study]
        [--epochs 5] [--seeds 0 1 2] [--sweep-lrs 0.05 0.1 0.2 0.4] [--high-lr 0.4] [--lr LR]

Several processes started on the same work dir share the runs (each claims a run before
training it), e.g. three workers on two cores:
``for i in 1 2 3; do nohup python experiments/quantization_study.py > w$i.log 2>&1 & done``.

Data: scikit-learn's digits (1,797 real 8x8 handwritten digits, shipped with the package),
upsampled to 16x16 RGB; every 5th image is val (360), the rest train (1,437). No
augmentation: a flip or crop changes what a digit is.

Stages, each run appended to ``runs.jsonl`` in the work dir (a rerun skips what is there):

1. **sweep**: both blocks, the ``qarepvgg`` preset (same for both), seed 0, each LR of
   ``--sweep-lrs`` (per 256 images), trained on 3/4 of train and scored on the other 1/4;
   the study's LR is the one whose worse block scores best (the smaller LR on a tie).
2. **main**: at that LR, each block with the ``simple`` and the ``qarepvgg`` preset (so
   both with the same preset, and each with its own), every seed; val top-1 of the float
   model and of its INT8 forms (ONNX Runtime, static QDQ per tensor and per channel, 32
   train images for calibration: :func:`repvgg_seg.quantize.classifier.quantize_classifier`),
   and of each INT8 form after QAT (``QAT_STEPS`` steps distilled from the float model).
3. **high-lr**: at ``--high-lr``, RepVGG-A0, QARepVGG-A0, and QARepVGG-A0 with its bare 1x1
   kernels at a tenth of the LR (``lr_1x1_scale=0.1``), every seed, float val top-1.

The training loop is the pretraining package's (:mod:`repvgg_seg.pretrain`: parameter
groups, SGD, per-step cosine, one epoch), on in-memory tensors, one thread.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from repvgg_seg.host import cpu_info
from repvgg_seg.models import RepVGGClassifier
from repvgg_seg.pretrain.engine import TrainingState, evaluate, train_one_epoch
from repvgg_seg.pretrain.recipe import build_lr_scheduler, build_optimizer, get_recipe, scaled_lr
from repvgg_seg.pretrain.transforms import IMAGENET_MEAN, IMAGENET_STD
from repvgg_seg.quantize.classifier import ClassifierQAT, quantize_classifier
from repvgg_seg.reparam import reparameterize_model

# Its helper module beside it, whether run as a script or loaded by path (as the tests do).
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_ledger import Ledger  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 16
BATCH = 64
BLOCKS = ("RepVGG-A0", "QARepVGG-A0")
PRESETS = ("simple", "qarepvgg")
SWEEP_PRESET = "qarepvgg"
CALIBRATION_IMAGES = 32
# QAT after each main run's PTQ: distilled from the float model's logits, SGD at this LR (per
# batch of 64) with a cosine to 0 over these steps (4.4 passes over train); the loss, LR and
# length were checked on the LR holdout (docs/qarepvgg.md).
QAT_STEPS, QAT_LR, QAT_LOSS = 96, 1e-3, "distill"
logger = logging.getLogger("quantization_study")


@dataclass(frozen=True)
class Split:
    """Normalized ``N,3,S,S`` images and their labels."""

    images: torch.Tensor
    labels: torch.Tensor


def digits() -> tuple[Split, Split]:
    """(train, val): every 5th digit is val; pixels scaled to [0, 1], 16x16, normalized."""
    from sklearn.datasets import load_digits

    data = load_digits()
    pixels = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16
    images = F.interpolate(pixels, size=IMAGE_SIZE, mode="bilinear", align_corners=False)
    images = images.expand(-1, 3, -1, -1)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    images = ((images - mean) / std).contiguous()
    labels = torch.tensor(data.target)
    is_val = torch.arange(len(labels)) % 5 == 0
    return Split(images[~is_val], labels[~is_val]), Split(images[is_val], labels[is_val])


def holdout(train: Split) -> tuple[Split, Split]:
    """(3/4, 1/4) of the training split, for choosing the LR without the val images."""
    is_holdout = torch.arange(len(train.labels)) % 4 == 0
    return (
        Split(train.images[~is_holdout], train.labels[~is_holdout]),
        Split(train.images[is_holdout], train.labels[is_holdout]),
    )


@dataclass(frozen=True)
class Run:
    """One training run: what it trains and with which settings."""

    stage: str
    model: str
    preset: str
    lr: float  # per 256 images
    seed: int
    epochs: int
    lr_1x1_scale: float = 1.0

    @property
    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def train(run: Run, train_split: Split, eval_split: Split) -> tuple[nn.Module | None, float]:
    """Trains ``run``; returns the model (eval mode) and its top-1 on ``eval_split``.

    A run whose loss becomes NaN or infinite scores 10 % (chance) and returns None.
    """
    recipe = get_recipe(run.preset)
    torch.manual_seed(run.seed)
    model = RepVGGClassifier.from_model_name(run.model, num_classes=10)
    generator = torch.Generator().manual_seed(run.seed)
    dataset = TensorDataset(train_split.images, train_split.labels)
    loader = DataLoader(dataset, BATCH, shuffle=True, generator=generator, drop_last=True)
    optimizer = build_optimizer(
        model,
        scaled_lr(run.lr, BATCH),
        recipe.momentum,
        recipe.weight_decay,
        recipe.decay_norm_and_bias,
        run.lr_1x1_scale,
    )
    state = TrainingState(
        model=model,
        optimizer=optimizer,
        lr_scheduler=build_lr_scheduler(optimizer, run.epochs, len(loader), 0),
        scaler=None,
        model_ema=None,
        train_model=model,
        criterion=nn.CrossEntropyLoss(),
        device=torch.device("cpu"),
    )
    try:
        for epoch in range(run.epochs):
            train_one_epoch(state, loader, epoch, run.epochs, print_freq=10**6)
    except FloatingPointError:
        return None, 10.0
    val_loader = DataLoader(TensorDataset(eval_split.images, eval_split.labels), 256)
    return model.eval(), evaluate(model, val_loader, torch.device("cpu"))["acc1"]


def quantized(model: nn.Module, train_split: Split, val: Split, seed: int) -> dict[str, float]:
    """Top-1 of the fused model under ONNX Runtime: float, INT8 per tensor, per channel, and
    each INT8 form after QAT."""
    fused = reparameterize_model(model, inplace=False).eval()
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(train_split.labels), CALIBRATION_IMAGES, replace=False)
    calibration = [train_split.images[i : i + 1].numpy() for i in chosen]
    with tempfile.TemporaryDirectory() as scratch:
        results = quantize_classifier(
            fused,
            IMAGE_SIZE,
            calibration,
            val.images.numpy(),
            val.labels.numpy(),
            Path(scratch),
            num_threads=1,
            qat=ClassifierQAT(
                train_split.images, train_split.labels, QAT_STEPS, QAT_LR, BATCH, QAT_LOSS, seed
            ),
        )
    out = {}
    for result in results:
        out[result.name] = result.top1
        out[f"{result.name} agreement"] = result.agreement
    return out


def sweep_runs(lrs: list[float], epochs: int) -> list[Run]:
    return [Run("sweep", m, SWEEP_PRESET, lr, 0, epochs) for lr in lrs for m in BLOCKS]


def main_runs(lr: float, args) -> list[Run]:
    # Seed-major: a study stopped early still has every cell at its first seeds.
    return [
        Run("main", model, preset, lr, seed, args.epochs)
        for seed in args.seeds
        for preset in PRESETS
        for model in BLOCKS
    ]


def high_lr_runs(args) -> list[Run]:
    variants = [(model, 1.0) for model in BLOCKS] + [("QARepVGG-A0", 0.1)]
    return [
        Run("high-lr", model, SWEEP_PRESET, args.high_lr, seed, args.epochs, scale)
        for seed in args.seeds
        for model, scale in variants
    ]


def chosen_lr(ledger: Ledger, runs: list[Run]) -> float | None:
    """The LR whose worse block scores best on the holdout (None until all have run)."""
    if any(run.key not in ledger.records for run in runs):
        return None
    worst: dict[float, float] = {}
    for run in runs:
        top1 = ledger.records[run.key]["top1"]
        worst[run.lr] = min(worst.get(run.lr, 100.0), top1)
    return max(sorted(worst), key=lambda lr: worst[lr])


def work(ledger: Ledger, data: tuple[Split, Split], args) -> float | None:
    """Drains the runs in order (sweep, main, high LR); returns the study's LR.

    While another worker finishes the sweep, this one trains high-LR runs instead of
    waiting; the main stage starts once the sweep has chosen the LR.
    """
    train_split, val = data
    fit, score = holdout(train_split)

    def high_lr(run: Run) -> dict:
        return {"top1": train(run, train_split, val)[1]}

    def with_int8(run: Run) -> dict:
        model, top1 = train(run, train_split, val)
        return {"top1": top1, **(quantized(model, train_split, val, run.seed) if model else {})}

    sweep = sweep_runs(args.sweep_lrs, args.epochs)
    high = high_lr_runs(args)
    for run in sweep:
        ledger.run(run, lambda r=run: {"top1": train(r, fit, score)[1]})
    lr = args.lr
    while lr is None:
        ledger.reload()
        lr = chosen_lr(ledger, sweep)
        if lr is None and not any(ledger.run(r, lambda r=r: high_lr(r)) for r in high):
            time.sleep(20)
    logger.info("LR per 256 images: %g", lr)
    for run in main_runs(lr, args):
        ledger.run(run, lambda r=run: with_int8(r))
    for run in high:
        ledger.run(run, lambda r=run: high_lr(r))
    return lr


def spread(values: list[float]) -> str:
    """``mean ± sample std (min-max)``."""
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f} ({min(values):.1f}-{max(values):.1f})"


def select(records: list[dict], **fields) -> list[dict]:
    """The records whose ``fields`` have these values."""
    return [r for r in records if all(r[k] == v for k, v in fields.items())]


def report(ledger: Ledger, lr: float) -> None:
    """Prints the three tables as markdown (docs/qarepvgg.md takes them as they are)."""
    records = list(ledger.records.values())
    print("\n| LR per 256 images (sweep, holdout top-1 %, seed 0) | " + " | ".join(BLOCKS) + " |")
    print("|---|" + "---|" * len(BLOCKS))
    sweep = select(records, stage="sweep")
    for at in sorted({r["lr"] for r in sweep}):
        tops = [f"{r['top1']:.2f}" for m in BLOCKS for r in select(sweep, model=m, lr=at)]
        print(f"| {at:g}{' (chosen)' if at == lr else ''} | " + " | ".join(tops) + " |")
    forms = ("top1", "int8 per-tensor", "int8 per-channel", "qat per-tensor", "qat per-channel")
    forms += ("int8 per-tensor agreement", "qat per-tensor agreement")
    print(f"\n| model, preset (LR {lr:g} per 256, val top-1 %) | float (PyTorch) | ", end="")
    print("INT8 per tensor | INT8 per channel | QAT per tensor | QAT per channel | ", end="")
    print("same class as float %, INT8 per tensor | same, QAT per tensor |")
    print("|---|" + "---|" * len(forms))
    for preset in PRESETS:
        for model in BLOCKS:
            rows = select(records, stage="main", model=model, preset=preset)
            cells = [spread([r[f] for r in rows if f in r]) for f in forms]
            print(f"| {model}, {preset} | " + " | ".join(cells) + " |")
    high = select(records, stage="high-lr")
    at = high[0]["lr"] if high else float("nan")
    print(f"\n| at LR {at:g} per 256 (val top-1 %, float) | seeds | mean ± std (min-max) |")
    print("|---|---|---|")
    for model, scale in [(m, 1.0) for m in BLOCKS] + [("QARepVGG-A0", 0.1)]:
        tops = [r["top1"] for r in select(high, model=model, lr_1x1_scale=scale)]
        label = f"{model}" + (f", 1x1 kernels x{scale:g}" if scale != 1 else "")
        print(f"| {label} | {' / '.join(f'{t:.1f}' for t in tops)} | {spread(tops)} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=ROOT / "work_dirs" / "quantization_study")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sweep-lrs", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4])
    parser.add_argument("--high-lr", type=float, default=0.4, help="per 256 images")
    parser.add_argument("--lr", type=float, help="skip the sweep and use this LR per 256")
    args = parser.parse_args(argv)
    # Only this study's progress lines: the ONNX exporter and the epoch loop log at INFO.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    torch.set_num_threads(1)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    cpu, flags = cpu_info()
    print(f"# host: {cpu} ({', '.join(flags)}), one thread, torch {torch.__version__}")
    print(f"# {IMAGE_SIZE}px digits, batch {BATCH}, {args.epochs} epochs, seeds {args.seeds}")
    ledger = Ledger(args.work_dir / "runs.jsonl")
    lr = work(ledger, digits(), args)
    ledger.reload()  # other workers' runs too
    runs = sweep_runs(args.sweep_lrs, args.epochs) + main_runs(lr, args) + high_lr_runs(args)
    if pending := sum(run.key not in ledger.records for run in runs):
        print(f"# partial: {pending} runs of other workers are unfinished; rerun to report all")
    report(ledger, lr)


if __name__ == "__main__":
    main()
