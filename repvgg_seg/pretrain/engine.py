"""One training epoch, evaluation (top-1/top-5) and the fused-versus-unfused check.

:class:`TrainingState` holds what an epoch updates (model, optimizer, scheduler, scaler,
EMA) and saves it as a checkpoint; :func:`train_one_epoch` steps it over one pass of the
loader. Every function takes the values it needs, not the whole command line, and reduces
its metrics over all processes, so each rank returns the same numbers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from ..equivalence import compare_logits, strict_float32
from .distributed import all_reduce_max, all_reduce_sum

logger = logging.getLogger(__name__)


def format_eta(seconds: float) -> str:
    """``'1 day, 2:03:04'``-style duration, whole seconds."""
    return str(timedelta(seconds=max(0, int(seconds))))


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Mixed precision: float16 on CUDA (with a grad scaler), bfloat16 on CPU."""
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def build_ema(model: nn.Module, decay: float, update_every: int) -> AveragedModel:
    """EMA of weights and BN statistics, updated every ``update_every`` steps.

    ``decay`` is per optimizer step; each update applies ``decay ** update_every`` so the
    averaging horizon does not depend on how often it is updated.
    """
    return AveragedModel(
        model, multi_avg_fn=get_ema_multi_avg_fn(decay**update_every), use_buffers=True
    )


@dataclass
class TrainingState:
    """The objects an epoch updates and a checkpoint saves, and how a step uses them.

    Attributes:
        model: The classifier itself (not wrapped); checkpoints hold its weights.
        optimizer: The optimizer.
        lr_scheduler: Per-iteration LR scheduler.
        scaler: Gradient scaler for float16 autocast on CUDA, or None.
        model_ema: EMA of the weights, or None.
        train_model: What the forward pass runs: ``model`` or its DDP wrapper.
        criterion: Loss on ``(logits, targets)``; targets are class indices or, with mixup,
            class probabilities.
        device: Where the model is.
        amp: Run forward passes under autocast.
        ema_update_every: Update the EMA every this many steps.
        world_size: Processes (images/s counts the global batch).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    model_ema: AveragedModel | None
    train_model: nn.Module
    criterion: nn.Module
    device: torch.device
    amp: bool = False
    ema_update_every: int = 32
    world_size: int = 1

    def state_dict(self, epoch: int, best_acc1: float, args: dict[str, Any]) -> dict:
        """The checkpoint after 0-based epoch ``epoch`` (torchvision's keys)."""
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

    def step(self, images: torch.Tensor, targets: torch.Tensor, step: int) -> tuple[float, float]:
        """One optimizer step (then the scheduler's, and the EMA's when due) on a batch.

        Returns:
            The loss and the LR the step used.
        """
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        with autocast(self.device, self.amp):
            loss = self.criterion(self.train_model(images), targets)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        lr = self.optimizer.param_groups[0]["lr"]
        self.lr_scheduler.step()
        if self.model_ema is not None and (step + 1) % self.ema_update_every == 0:
            self.model_ema.update_parameters(self.model)
        return loss.item(), lr


@dataclass
class TrainStats:
    """What one epoch reports (averaged over all processes)."""

    loss: float
    lr: float
    images_per_second: float
    seconds: float


class _ProgressLog:
    """Logs loss, LR, throughput and ETAs every ``print_freq`` steps of an epoch."""

    def __init__(self, num_steps: int, epoch: int, num_epochs: int, print_freq: int) -> None:
        self.num_steps, self.epoch, self.num_epochs = num_steps, epoch, num_epochs
        self.print_freq = print_freq
        self.start = self.last_log = time.perf_counter()
        self.images_since_log = 0

    def update(self, step: int, images: int, loss: float, mean_loss: float, lr: float) -> None:
        self.images_since_log += images
        if (step + 1) % self.print_freq and step + 1 != self.num_steps:
            return
        now = time.perf_counter()
        seconds_per_step = (now - self.start) / (step + 1)
        epoch_eta = seconds_per_step * (self.num_steps - step - 1)
        later_epochs = seconds_per_step * self.num_steps * (self.num_epochs - self.epoch - 1)
        logger.info(
            "Epoch [%d/%d] [%d/%d] loss %.4f (avg %.4f) lr %.6f %.1f img/s "
            "eta epoch %s, total %s",
            self.epoch + 1,
            self.num_epochs,
            step + 1,
            self.num_steps,
            loss,
            mean_loss,
            lr,
            self.images_since_log / max(now - self.last_log, 1e-9),
            format_eta(epoch_eta),
            format_eta(epoch_eta + later_epochs),
        )
        self.last_log, self.images_since_log = now, 0


def train_one_epoch(
    state: TrainingState,
    loader: DataLoader,
    epoch: int,
    num_epochs: int,
    print_freq: int = 10,
) -> TrainStats:
    """Trains for one epoch; the LR scheduler steps every iteration.

    Args:
        state: The model, optimizer, scheduler, scaler and EMA, and how to step them.
        loader: Training batches for this process.
        epoch: 0-based epoch index (for logs and the ETA).
        num_epochs: Total epochs of the run (for the ETA).
        print_freq: Log every this many iterations.

    Returns:
        Mean loss over all processes, the LR of the last step, throughput and duration.
    """
    state.train_model.train()
    progress = _ProgressLog(len(loader), epoch, num_epochs, print_freq)
    loss_sum, sample_count, lr = 0.0, 0, state.optimizer.param_groups[0]["lr"]
    for step, (images, targets) in enumerate(loader):
        loss, lr = state.step(images, targets, step)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"Loss is {loss} at epoch {epoch + 1}, step {step + 1}; lower --lr or check "
                "the data."
            )
        batch = images.shape[0]
        loss_sum += loss * batch
        sample_count += batch
        progress.update(step, batch * state.world_size, loss, loss_sum / sample_count, lr)
    seconds = time.perf_counter() - progress.start
    total_loss, total_count = all_reduce_sum([loss_sum, sample_count], state.device)
    return TrainStats(
        loss=total_loss / max(total_count, 1),
        lr=lr,
        images_per_second=total_count / max(seconds, 1e-9),
        seconds=seconds,
    )


def _correct_topk(logits: torch.Tensor, targets: torch.Tensor, k: int) -> int:
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return int((top == targets[:, None]).any(dim=1).sum())


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp: bool = False,
    log_prefix: str = "Val",
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) and mean cross-entropy over the whole val set.

    Counts are summed over processes, so with a sharded loader every image counts once.
    """
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss_sum, correct1, correct5, count = 0.0, 0, 0, 0
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        loss_sum += criterion(logits, targets).item()
        correct1 += _correct_topk(logits, targets, 1)
        correct5 += _correct_topk(logits, targets, 5)
        count += targets.shape[0]
    loss_sum, correct1, correct5, count = all_reduce_sum(
        [loss_sum, correct1, correct5, count], device
    )
    metrics = {
        "acc1": 100.0 * correct1 / max(count, 1),
        "acc5": 100.0 * correct5 / max(count, 1),
        "loss": loss_sum / max(count, 1),
        "images": int(count),
    }
    logger.info(
        "%s: acc@1 %.3f acc@5 %.3f loss %.4f (%d images)",
        log_prefix,
        metrics["acc1"],
        metrics["acc5"],
        metrics["loss"],
        metrics["images"],
    )
    return metrics


@torch.inference_mode()
def compare_fused(
    model: nn.Module, fused: nn.Module, loader: DataLoader, device: torch.device
) -> dict[str, float]:
    """Evaluates the unfused and the fused classifier on the same batches.

    Both run in true float32 (TF32 and autocast off, :func:`repvgg_seg.equivalence.
    strict_float32`), and their logits are compared by the project's one fusion criterion
    (:func:`repvgg_seg.equivalence.compare_logits`), reduced over all processes.

    Returns:
        ``acc1``, ``acc1_fused``, ``acc5``, ``acc5_fused`` (percent), ``disagreements`` (images
        whose top-1 class differs), ``max_logit_diff``, ``images`` and ``agreement`` (the
        :class:`~repvgg_seg.equivalence.Agreement` over the whole val set).
    """
    model.eval()
    fused.eval()
    counts = [0, 0, 0, 0]  # correct1, correct1_fused, correct5, correct5_fused
    agreement = None
    with strict_float32():
        for images, targets in loader:
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            logits, logits_fused = model(images).float(), fused(images).float()
            counts[0] += _correct_topk(logits, targets, 1)
            counts[1] += _correct_topk(logits_fused, targets, 1)
            counts[2] += _correct_topk(logits, targets, 5)
            counts[3] += _correct_topk(logits_fused, targets, 5)
            batch = compare_logits(logits, logits_fused)
            agreement = batch if agreement is None else agreement.merge(batch)
    if agreement is None:
        agreement = compare_logits(torch.zeros(0, 2), torch.zeros(0, 2))
    c1, c1f, c5, c5f, changed, beyond, n = all_reduce_sum(
        [*counts, agreement.changed, agreement.changed_beyond_margin, agreement.num_compared],
        device,
    )
    agreement = replace(
        agreement,
        max_abs_diff=all_reduce_max(agreement.max_abs_diff, device),
        max_abs_reference=all_reduce_max(agreement.max_abs_reference, device),
        max_relative_diff=all_reduce_max(agreement.max_relative_diff, device),
        changed=int(changed),
        changed_beyond_margin=int(beyond),
        num_compared=int(n),
    )
    n = max(n, 1)
    return {
        "acc1": 100.0 * c1 / n,
        "acc1_fused": 100.0 * c1f / n,
        "acc5": 100.0 * c5 / n,
        "acc5_fused": 100.0 * c5f / n,
        "disagreements": agreement.changed,
        "max_logit_diff": agreement.max_abs_diff,
        "images": agreement.num_compared,
        "agreement": agreement,
    }
