"""The pretraining run, in four parts: build (data, model, optimizer: :func:`_build_data`,
:func:`_build_state`), resume (:func:`_resume`), the epoch loop (:func:`_train_epochs`,
one :func:`_run_epoch` per epoch) and finish (:func:`_finish_with_deploy`: the fused,
deployed classifier). :func:`run_pretraining` runs them from a :class:`PretrainConfig`.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..atomic_io import save_atomically
from ..equivalence import Agreement
from ..errors import UsageError
from ..models.classifier import RepVGGClassifier
from ..reparam import reparameterize_model
from . import output_files as ckpt
from .config import PretrainConfig
from .data import build_datasets, build_loaders
from .distributed import DistContext, broadcast_buffers, cleanup_distributed, init_distributed
from .engine import (
    TrainingState,
    build_ema,
    compare_fused,
    evaluate,
    format_eta,
    train_one_epoch,
)
from .recipe import build_lr_scheduler, build_optimizer, scaled_lr

logger = logging.getLogger(__name__)


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seeds augmentation and mixup for one epoch of one process.

    Derived from ``(seed, epoch, rank)`` only, so an epoch draws the same random numbers
    whether the run got there uninterrupted or by ``--resume``.
    """
    derived = random.Random(f"{seed}-{epoch}-{rank}").getrandbits(63)
    random.seed(derived)
    torch.manual_seed(derived)


def _check_resume_matches(saved: dict, current: dict, path: str) -> None:
    # The LR schedule is per optimizer step: a different global batch or epoch count would
    # silently bend it, so those must match.
    for key in ("model", "num_classes", "global_batch_size", "epochs", "lr_warmup_epochs"):
        if saved.get(key) != current[key]:
            raise UsageError(
                f"--resume {path} was trained with {key}={saved.get(key)!r} but this run has "
                f"{key}={current[key]!r}; resume with the same value (for the global batch: "
                "--batch-size x processes)."
            )


def _load_for_evaluation(path: str, arch: str, num_classes: int) -> RepVGGClassifier:
    checkpoint = ckpt.read_pretraining_checkpoint(path)
    deploy = bool(checkpoint.get("deploy", False))
    saved_arch = checkpoint.get("arch") or checkpoint.get("args", {}).get("model")
    if saved_arch is not None and saved_arch != arch:
        raise UsageError(f"--resume {path} holds model {saved_arch}, not --model {arch}.")
    fc_weight = checkpoint["model"].get("fc.weight")
    if fc_weight is not None and fc_weight.shape[0] != num_classes:
        raise UsageError(
            f"--resume {path} has {fc_weight.shape[0]} classes but the dataset has "
            f"{num_classes}; evaluate on the dataset it was trained on."
        )
    model = RepVGGClassifier.from_model_name(arch, num_classes=num_classes, deploy=deploy)
    model.load_state_dict(checkpoint["model"])
    return model


def _finish_with_deploy(
    model: RepVGGClassifier,
    val_loader,
    ctx: DistContext,
    arch: str,
    num_classes: int,
    output_dir: Path | None,
) -> dict[str, Any]:
    """Fuses a copy of ``model``, checks it against ``model`` and saves it if it agrees.

    Runs after the last epoch's checkpoints are written, so a failed check loses nothing.

    Raises:
        FusionMismatchError: the fused classifier's logits differ beyond float32 round-off
            (:mod:`repvgg_seg.equivalence`); no deployed file is written then.
    """
    fused = reparameterize_model(copy.deepcopy(model).eval(), inplace=True)
    result = compare_fused(model, fused, val_loader, ctx.device)
    agreement: Agreement = result["agreement"]
    logger.info(
        "Deployed classifier: acc@1 %.3f (unfused %.3f), acc@5 %.3f (unfused %.3f); %s",
        result["acc1_fused"],
        result["acc1"],
        result["acc5_fused"],
        result["acc5"],
        agreement.describe("images"),
    )
    agreement.check("fused vs unfused classifier on the val set", "images")
    if ctx.is_main and output_dir is not None:
        path = output_dir / ckpt.DEPLOY_NAME
        save_atomically(ckpt.deployed_checkpoint_dict(fused.state_dict(), arch, num_classes), path)
        logger.info("Wrote the deployed classifier to %s", path)
    return result


def run_pretraining(config: PretrainConfig) -> dict[str, Any]:
    """Trains (or with ``test_only`` evaluates) a RepVGG classifier on ImageNet-style data.

    Works alone or as one process of ``torchrun``; only rank 0 writes files.

    Returns:
        ``{'epochs_completed', 'best_acc1', 'last': last val metrics, 'fused': deploy check
        (only when the schedule finished)}``; under test_only, the val metrics.
    """
    cfg = config.resolved()
    ctx = init_distributed(cfg.device)
    writes = None if cfg.test_only else cfg.output_dir
    try:
        with ckpt.claim_output_dir(writes, ctx.is_main, ctx.distributed):
            return _run(cfg, ctx)
    finally:
        if ctx.distributed:
            cleanup_distributed()


@dataclass(frozen=True)
class _Data:
    num_classes: int
    train_loader: DataLoader
    val_loader: DataLoader
    train_sampler: DistributedSampler


def _run(cfg: PretrainConfig, ctx: DistContext) -> dict[str, Any]:
    output_dir = Path(cfg.output_dir) if cfg.output_dir else None
    data = _build_data(cfg, ctx)
    if cfg.test_only:
        model = _load_for_evaluation(cfg.resume, cfg.model, data.num_classes).to(ctx.device)
        return evaluate(model, data.val_loader, ctx.device, amp=cfg.amp)

    args = _run_args(cfg, ctx, data.num_classes)
    state = _build_state(cfg, ctx, data.num_classes, len(data.train_loader), args["scaled_lr"])
    start_epoch, best_acc1 = _resume(state, cfg.resume, args) if cfg.resume else (0, 0.0)
    if ctx.is_main and output_dir is not None:
        ckpt.truncate_metrics(output_dir / ckpt.METRICS_NAME, completed_epochs=start_epoch)
    end_epoch = cfg.stop_after_epoch or cfg.epochs
    last, best_acc1 = _train_epochs(
        cfg, ctx, state, data, range(start_epoch, end_epoch), best_acc1, args, output_dir
    )

    result: dict[str, Any] = {"epochs_completed": end_epoch, "best_acc1": best_acc1, "last": last}
    if end_epoch == cfg.epochs:
        result["fused"] = _finish_with_deploy(
            state.model, data.val_loader, ctx, cfg.model, data.num_classes, output_dir
        )
    elif start_epoch < end_epoch:
        logger.info("Stopped after epoch %d of %d; continue with --resume.", end_epoch, cfg.epochs)
    return result


def _build_data(cfg: PretrainConfig, ctx: DistContext) -> _Data:
    splits = build_datasets(
        cfg.data_path, cfg.train_crop_size, cfg.val_resize_size, cfg.val_crop_size, cfg.augmentation
    )
    train_loader, val_loader, train_sampler = build_loaders(
        splits,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        world_size=ctx.world_size,
        rank=ctx.rank,
        seed=cfg.seed,
        mixup_alpha=cfg.mixup_alpha,
        pin_memory=ctx.device.type == "cuda",
    )
    return _Data(splits.num_classes, train_loader, val_loader, train_sampler)


def _run_args(cfg: PretrainConfig, ctx: DistContext, num_classes: int) -> dict[str, Any]:
    """The run's settings as saved in every checkpoint (``args``), logged once."""
    global_batch = cfg.batch_size * ctx.world_size
    lr = scaled_lr(cfg.lr, global_batch)
    logger.info(
        "%s, recipe %s: %d epochs, global batch %d (%d x %d), lr %.4g (%.4g per 256), "
        "wd %.1e, warmup %d, label smoothing %.2f, mixup %.2f, auto-augment %s",
        cfg.model_label,
        cfg.recipe,
        cfg.epochs,
        global_batch,
        cfg.batch_size,
        ctx.world_size,
        lr,
        cfg.lr,
        cfg.wd,
        cfg.lr_warmup_epochs,
        cfg.label_smoothing,
        cfg.mixup_alpha,
        cfg.auto_augment,
    )
    return {
        **cfg.as_dict(),
        "num_classes": num_classes,
        "world_size": ctx.world_size,
        "global_batch_size": global_batch,
        "scaled_lr": lr,
    }


def _build_state(
    cfg: PretrainConfig, ctx: DistContext, num_classes: int, steps_per_epoch: int, lr: float
) -> TrainingState:
    torch.manual_seed(cfg.seed)
    model = RepVGGClassifier.from_model_name(cfg.model, num_classes=num_classes).to(ctx.device)
    optimizer = build_optimizer(
        model, lr, cfg.momentum, cfg.wd, cfg.decay_norm_and_bias, cfg.lr_1x1_scale
    )
    train_model: nn.Module = model
    if ctx.distributed:
        device_ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=device_ids)
    return TrainingState(
        model=model,
        optimizer=optimizer,
        lr_scheduler=build_lr_scheduler(
            optimizer, cfg.epochs, steps_per_epoch, cfg.lr_warmup_epochs
        ),
        scaler=torch.amp.GradScaler("cuda") if cfg.amp and ctx.device.type == "cuda" else None,
        model_ema=build_ema(model, cfg.model_ema_decay, cfg.model_ema_steps)
        if cfg.model_ema
        else None,
        train_model=train_model,
        criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        device=ctx.device,
        amp=cfg.amp,
        ema_update_every=cfg.model_ema_steps,
        world_size=ctx.world_size,
    )


def _resume(state: TrainingState, path: str, args: dict[str, Any]) -> tuple[int, float]:
    """Restores ``state`` from a training checkpoint; returns (next epoch, best top-1)."""
    checkpoint = ckpt.read_pretraining_checkpoint(path)
    ckpt.check_resumable(checkpoint, path)
    _check_resume_matches(checkpoint["args"], args, path)
    state.load_state_dict(checkpoint)
    start_epoch = int(checkpoint["epoch"]) + 1
    logger.info("Resumed from %s: %d epochs done", path, start_epoch)
    return start_epoch, float(checkpoint.get("best_acc1", 0.0))


def _train_epochs(
    cfg: PretrainConfig,
    ctx: DistContext,
    state: TrainingState,
    data: _Data,
    epochs: range,
    best_acc1: float,
    args: dict[str, Any],
    output_dir: Path | None,
) -> tuple[dict[str, float], float]:
    """Runs ``epochs``, checkpointing after each; returns the last val metrics and best top-1."""
    last: dict[str, float] = {}
    run_start = time.perf_counter()
    for epoch in epochs:
        last, record = _run_epoch(cfg, ctx, state, data, epoch)
        is_best = last["acc1"] > best_acc1
        best_acc1 = max(best_acc1, last["acc1"])
        elapsed = time.perf_counter() - run_start
        remaining = elapsed / (epoch + 1 - epochs.start) * (cfg.epochs - epoch - 1)
        logger.info(
            "Epoch %d/%d done in %s: train loss %.4f, val acc@1 %.3f (best %.3f), ETA %s",
            epoch + 1,
            cfg.epochs,
            format_eta(record["epoch_seconds"]),
            record["train_loss"],
            last["acc1"],
            best_acc1,
            format_eta(remaining),
        )
        if ctx.is_main and output_dir is not None:
            ckpt.append_metrics(output_dir / ckpt.METRICS_NAME, record)
            saved = state.state_dict(epoch, best_acc1, args)
            save_atomically(saved, output_dir / ckpt.CHECKPOINT_NAME)
            if is_best:
                save_atomically(saved, output_dir / ckpt.BEST_NAME)
    return last, best_acc1


def _run_epoch(
    cfg: PretrainConfig, ctx: DistContext, state: TrainingState, data: _Data, epoch: int
) -> tuple[dict[str, float], dict[str, Any]]:
    """Trains one epoch and evaluates; returns the val metrics and the metrics record."""
    seed_epoch(cfg.seed, epoch, ctx.rank)
    data.train_sampler.set_epoch(epoch)
    stats = train_one_epoch(state, data.train_loader, epoch, cfg.epochs, cfg.print_freq)
    if state.model_ema is not None and epoch < cfg.lr_warmup_epochs:
        # During warmup the weights move too fast to average; the next update copies.
        state.model_ema.n_averaged.fill_(0)
    broadcast_buffers(state.model)
    metrics = evaluate(state.model, data.val_loader, ctx.device, amp=cfg.amp)
    record = {
        "epoch": epoch + 1,
        "train_loss": stats.loss,
        "lr": stats.lr,
        "acc1": metrics["acc1"],
        "acc5": metrics["acc5"],
        "val_loss": metrics["loss"],
        "images_per_second": stats.images_per_second,
        "epoch_seconds": stats.seconds,
    }
    if state.model_ema is not None:
        broadcast_buffers(state.model_ema)
        ema = evaluate(state.model_ema.module, data.val_loader, ctx.device, cfg.amp, "Val EMA")
        record.update(acc1_ema=ema["acc1"], acc5_ema=ema["acc5"])
    return metrics, record
