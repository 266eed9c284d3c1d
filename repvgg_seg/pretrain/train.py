"""The pretraining run: build everything from a :class:`PretrainConfig`, train, evaluate,
checkpoint every epoch, and finish with the fused (deployed) classifier.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mmengine.logging import MMLogger
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..atomic_io import save_atomically
from ..equivalence import Agreement
from ..models.classifier import RepVGGClassifier
from ..reparam import reparameterize_model
from . import checkpoint as ckpt
from .config import PretrainConfig
from .data import build_datasets, build_loaders
from .distributed import DistContext, broadcast_buffers, cleanup_distributed, init_distributed
from .engine import build_ema, compare_fused, evaluate, format_eta, train_one_epoch
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


@contextlib.contextmanager
def _quiet_mmengine() -> Iterator[None]:
    """Silences mmengine's INFO logs: its init_weights logs one entry per parameter."""
    mm_logger = MMLogger.get_current_instance()
    level = mm_logger.level
    mm_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        mm_logger.setLevel(level)


@dataclass
class TrainingState:
    """The objects a checkpoint saves and restores."""

    model: RepVGGClassifier
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    model_ema: torch.optim.swa_utils.AveragedModel | None

    def state_dict(self, epoch: int, best_acc1: float, args: dict[str, Any]) -> dict:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "epoch": epoch,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "best_acc1": best_acc1,
            "args": args,
        }
        if self.model_ema is not None:
            # The averaged module's own keys (same as 'model'), so any loader can use it.
            state["model_ema"] = self.model_ema.module.state_dict()
            state["model_ema_updates"] = int(self.model_ema.n_averaged.item())
        return state

    def load_state_dict(self, checkpoint: dict) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        if self.model_ema is not None:
            if "model_ema" in checkpoint:
                self.model_ema.module.load_state_dict(checkpoint["model_ema"])
                self.model_ema.n_averaged.fill_(checkpoint["model_ema_updates"])
            else:
                logger.warning("The checkpoint has no EMA; starting it from the loaded weights.")
                self.model_ema.module.load_state_dict(checkpoint["model"])


def _check_resume_matches(saved: dict, current: dict, path: str) -> None:
    # The LR schedule is per optimizer step: a different global batch or epoch count would
    # silently bend it, so those must match.
    for key in ("model", "num_classes", "global_batch_size", "epochs", "lr_warmup_epochs"):
        if saved.get(key) != current[key]:
            raise ValueError(
                f"--resume {path} was trained with {key}={saved.get(key)!r} but this run has "
                f"{key}={current[key]!r}; resume with the same value (for the global batch: "
                "--batch-size x processes)."
            )


def _load_for_evaluation(path: str, arch: str, num_classes: int) -> RepVGGClassifier:
    checkpoint = ckpt.load_checkpoint(path)
    deploy = bool(checkpoint.get("deploy", False))
    saved_arch = checkpoint.get("arch") or checkpoint.get("args", {}).get("model")
    if saved_arch is not None and saved_arch != arch:
        raise ValueError(f"--resume {path} holds RepVGG-{saved_arch}, not --model {arch}.")
    fc_weight = checkpoint["model"].get("fc.weight")
    if fc_weight is not None and fc_weight.shape[0] != num_classes:
        raise ValueError(
            f"--resume {path} has {fc_weight.shape[0]} classes but the dataset has "
            f"{num_classes}; evaluate on the dataset it was trained on."
        )
    with _quiet_mmengine():
        model = RepVGGClassifier(arch, num_classes=num_classes, deploy=deploy)
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
        save_atomically(ckpt.deploy_checkpoint(fused.state_dict(), arch, num_classes), path)
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
    try:
        return _run(cfg, ctx)
    finally:
        if ctx.distributed:
            cleanup_distributed()


def _run(cfg: PretrainConfig, ctx: DistContext) -> dict[str, Any]:
    output_dir = Path(cfg.output_dir) if cfg.output_dir else None
    splits = build_datasets(
        cfg.data_path, cfg.train_crop_size, cfg.val_resize_size, cfg.val_crop_size, cfg.auto_augment
    )
    num_classes = splits.num_classes
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

    if cfg.test_only:
        model = _load_for_evaluation(cfg.resume, cfg.model, num_classes).to(ctx.device)
        return evaluate(model, val_loader, ctx.device, amp=cfg.amp)

    global_batch = cfg.batch_size * ctx.world_size
    lr = scaled_lr(cfg.lr, global_batch)
    args = {
        **cfg.as_dict(),
        "num_classes": num_classes,
        "world_size": ctx.world_size,
        "global_batch_size": global_batch,
        "scaled_lr": lr,
    }
    logger.info(
        "RepVGG-%s, recipe %s: %d epochs, global batch %d (%d x %d), lr %.4g (%.4g per 256), "
        "wd %.1e, warmup %d, label smoothing %.2f, mixup %.2f, auto-augment %s",
        cfg.model,
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

    torch.manual_seed(cfg.seed)
    with _quiet_mmengine():
        model = RepVGGClassifier(cfg.model, num_classes=num_classes).to(ctx.device)
    optimizer = build_optimizer(model, lr=lr, momentum=cfg.momentum, weight_decay=cfg.wd)
    state = TrainingState(
        model=model,
        optimizer=optimizer,
        lr_scheduler=build_lr_scheduler(
            optimizer, cfg.epochs, len(train_loader), cfg.lr_warmup_epochs
        ),
        scaler=torch.amp.GradScaler("cuda") if cfg.amp and ctx.device.type == "cuda" else None,
        model_ema=build_ema(model, cfg.model_ema_decay, cfg.model_ema_steps)
        if cfg.model_ema
        else None,
    )
    start_epoch, best_acc1 = 0, 0.0
    if cfg.resume:
        checkpoint = ckpt.load_checkpoint(cfg.resume)
        ckpt.check_resumable(checkpoint, cfg.resume)
        _check_resume_matches(checkpoint["args"], args, cfg.resume)
        state.load_state_dict(checkpoint)
        start_epoch = int(checkpoint["epoch"]) + 1
        best_acc1 = float(checkpoint.get("best_acc1", 0.0))
        logger.info("Resumed from %s: %d epochs done", cfg.resume, start_epoch)
    if ctx.is_main and output_dir is not None:
        ckpt.truncate_metrics(output_dir / ckpt.METRICS_NAME, completed_epochs=start_epoch)

    train_model: nn.Module = model
    if ctx.distributed:
        device_ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=device_ids)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    end_epoch = cfg.stop_after_epoch or cfg.epochs
    last: dict[str, float] = {}
    run_start = time.perf_counter()
    for epoch in range(start_epoch, end_epoch):
        seed_epoch(cfg.seed, epoch, ctx.rank)
        train_sampler.set_epoch(epoch)
        stats = train_one_epoch(
            train_model,
            criterion,
            state.optimizer,
            state.lr_scheduler,
            train_loader,
            ctx.device,
            epoch=epoch,
            num_epochs=cfg.epochs,
            world_size=ctx.world_size,
            scaler=state.scaler,
            amp=cfg.amp,
            model_ema=state.model_ema,
            ema_update_every=cfg.model_ema_steps,
            print_freq=cfg.print_freq,
        )
        if state.model_ema is not None and epoch < cfg.lr_warmup_epochs:
            # During warmup the weights move too fast to average; the next update copies.
            state.model_ema.n_averaged.fill_(0)
        broadcast_buffers(model)
        last = evaluate(model, val_loader, ctx.device, amp=cfg.amp)
        record = {
            "epoch": epoch + 1,
            "train_loss": stats.loss,
            "lr": stats.lr,
            "acc1": last["acc1"],
            "acc5": last["acc5"],
            "val_loss": last["loss"],
            "images_per_second": stats.images_per_second,
            "epoch_seconds": stats.seconds,
        }
        if state.model_ema is not None:
            broadcast_buffers(state.model_ema)
            ema = evaluate(state.model_ema.module, val_loader, ctx.device, cfg.amp, "Val EMA")
            record.update(acc1_ema=ema["acc1"], acc5_ema=ema["acc5"])
        is_best = last["acc1"] > best_acc1
        best_acc1 = max(best_acc1, last["acc1"])
        elapsed = time.perf_counter() - run_start
        remaining = elapsed / (epoch + 1 - start_epoch) * (cfg.epochs - epoch - 1)
        logger.info(
            "Epoch %d/%d done in %s: train loss %.4f, val acc@1 %.3f (best %.3f), ETA %s",
            epoch + 1,
            cfg.epochs,
            format_eta(stats.seconds),
            stats.loss,
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

    result: dict[str, Any] = {"epochs_completed": end_epoch, "best_acc1": best_acc1, "last": last}
    if end_epoch == cfg.epochs:
        result["fused"] = _finish_with_deploy(
            model, val_loader, ctx, cfg.model, num_classes, output_dir
        )
    elif start_epoch < end_epoch:
        logger.info("Stopped after epoch %d of %d; continue with --resume.", end_epoch, cfg.epochs)
    return result
