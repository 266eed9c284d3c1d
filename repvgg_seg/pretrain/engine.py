"""One training epoch, evaluation (top-1/top-5) and the fused-versus-unfused check.

Every function takes the values it needs, not the whole command line, and reduces its
metrics over all processes, so each rank returns the same numbers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, replace
from datetime import timedelta

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
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
class TrainStats:
    """What one epoch reports (averaged over all processes)."""

    loss: float
    lr: float
    images_per_second: float
    seconds: float


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: DataLoader,
    device: torch.device,
    epoch: int,
    num_epochs: int,
    world_size: int = 1,
    scaler: torch.amp.GradScaler | None = None,
    amp: bool = False,
    model_ema: AveragedModel | None = None,
    ema_update_every: int = 32,
    print_freq: int = 10,
) -> TrainStats:
    """Trains ``model`` for one epoch; the LR scheduler steps every iteration.

    Args:
        model: The classifier, possibly wrapped in DDP.
        criterion: Loss on ``(logits, targets)``; targets are class indices or, with
            mixup, class probabilities.
        optimizer: The optimizer.
        lr_scheduler: Per-iteration scheduler.
        loader: Training batches for this process.
        device: Where the model is.
        epoch: 0-based epoch index (for logs and the ETA).
        num_epochs: Total epochs of the run (for the ETA).
        world_size: Processes; images/s counts the global batch.
        scaler: Gradient scaler for float16 autocast on CUDA, or None.
        amp: Run forward passes under autocast.
        model_ema: EMA to update, or None.
        ema_update_every: Update the EMA every this many steps.
        print_freq: Log every this many iterations.

    Returns:
        Mean loss over all processes, the LR of the last step, throughput and duration.
    """
    model.train()
    num_steps = len(loader)
    loss_sum, sample_count = 0.0, 0
    start = last_log = time.perf_counter()
    images_since_log = 0
    for step, (images, targets) in enumerate(loader):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, amp):
            loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        lr_scheduler.step()
        if model_ema is not None and (step + 1) % ema_update_every == 0:
            unwrapped = model.module if isinstance(model, DistributedDataParallel) else model
            model_ema.update_parameters(unwrapped)

        batch = images.shape[0]
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                f"Loss is {loss_value} at epoch {epoch + 1}, step {step + 1}; lower --lr or "
                "check the data."
            )
        loss_sum += loss_value * batch
        sample_count += batch
        images_since_log += batch * world_size
        if (step + 1) % print_freq == 0 or step + 1 == num_steps:
            now = time.perf_counter()
            seconds_per_step = (now - start) / (step + 1)
            epoch_eta = seconds_per_step * (num_steps - step - 1)
            total_eta = epoch_eta + seconds_per_step * num_steps * (num_epochs - epoch - 1)
            logger.info(
                "Epoch [%d/%d] [%d/%d] loss %.4f (avg %.4f) lr %.6f %.1f img/s "
                "eta epoch %s, total %s",
                epoch + 1,
                num_epochs,
                step + 1,
                num_steps,
                loss_value,
                loss_sum / sample_count,
                lr,
                images_since_log / max(now - last_log, 1e-9),
                format_eta(epoch_eta),
                format_eta(total_eta),
            )
            last_log, images_since_log = now, 0
    seconds = time.perf_counter() - start
    total_loss, total_count = all_reduce_sum([loss_sum, sample_count], device)
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
