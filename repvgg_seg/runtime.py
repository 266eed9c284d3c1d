"""Runtime helpers for mmengine runs on torch >= 2.6: safe resume, atomic checkpoints, CPU.

- :func:`allow_mmengine_checkpoint_types` (defined in :mod:`repvgg_seg.checkpoint`, the one
  allow-list) lets ``torch.load(weights_only=True)`` (the default since torch 2.6, which
  mmengine 0.10 relies on) read mmengine's own training checkpoints.
- :class:`AtomicCheckpointRunner` writes every checkpoint to a temporary file and renames it,
  so a run killed while saving never leaves a truncated ``iter_N.pth`` behind.
- :func:`init_cpu_distributed` and :func:`configure_for_cpu` make ``--launcher pytorch``
  work on a machine without GPUs (gloo; mmengine's own start-up calls
  ``torch.cuda.set_device`` and passes GPU ``device_ids`` to DistributedDataParallel).
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.dist import master_only
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from .checkpoint import allow_mmengine_checkpoint_types

__all__ = [
    "AtomicCheckpointRunner",
    "allow_mmengine_checkpoint_types",
    "configure_for_cpu",
    "init_cpu_distributed",
]

logger = logging.getLogger(__name__)


@RUNNERS.register_module()
class AtomicCheckpointRunner(Runner):
    """mmengine's ``Runner`` whose checkpoints appear complete or not at all.

    Select it with ``runner_type = 'AtomicCheckpointRunner'`` in a config (the default in
    ``configs/_base_/default_runtime.py``).
    """

    @master_only  # like Runner.save_checkpoint: only rank 0 writes
    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs) -> None:
        if kwargs.get("backend_args") or kwargs.get("file_client_args") or "://" in out_dir:
            super().save_checkpoint(out_dir, filename, *args, **kwargs)
            return
        partial = f".{filename}.partial"
        super().save_checkpoint(out_dir, partial, *args, **kwargs)
        os.replace(os.path.join(out_dir, partial), os.path.join(out_dir, filename))


def init_cpu_distributed(launcher: str) -> bool:
    """Starts a gloo process group when launched by torchrun on a machine without GPUs.

    Args:
        launcher: The tools' ``--launcher`` value.

    Returns:
        True when this call started the process group.
    """
    if launcher != "pytorch" or torch.cuda.is_available() or dist.is_initialized():
        return False
    dist.init_process_group(backend="gloo")
    logger.info(
        "No GPU: started a gloo process group (rank %d of %d).",
        dist.get_rank(),
        dist.get_world_size(),
    )
    return True


def configure_for_cpu(cfg: Config) -> None:
    """Adapts a config for a machine without GPUs (no-op when CUDA is available).

    Distributed runs use gloo instead of nccl, and DistributedDataParallel is built without
    ``device_ids`` (mmengine's default passes the local rank as a GPU index).
    """
    if torch.cuda.is_available():
        return
    if cfg.get("env_cfg", {}).get("dist_cfg"):
        cfg.env_cfg.dist_cfg.backend = "gloo"
    if cfg.get("model_wrapper_cfg") is None:
        cfg.model_wrapper_cfg = dict(
            type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False
        )
