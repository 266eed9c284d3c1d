"""Distributed start-up, on machines with and without GPUs: the package's one owner of it.

:func:`init_process_group` joins the process group that ``torchrun`` describes in the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``): each
process takes GPU ``LOCAL_RANK`` and nccl, or gloo without GPUs. The mmengine tools reach it
through :func:`init_distributed` (``--launcher pytorch`` without GPUs; with GPUs mmengine's
own ``init_dist``, which its runner expects), ImageNet pretraining through
:func:`repvgg_seg.pretrain.distributed.init_distributed`.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.dist import init_dist, is_distributed

logger = logging.getLogger(__name__)


def init_process_group(device_type: str) -> bool:
    """Joins torchrun's process group (a no-op when this process has joined one already).

    Args:
        device_type: ``'cuda'`` (this process takes GPU ``LOCAL_RANK``; nccl) or ``'cpu'``
            (gloo).

    Returns:
        True when this call started the process group.
    """
    if dist.is_initialized():
        return False
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    logger.info(
        "Started a %s process group (rank %d of %d).",
        backend,
        dist.get_rank(),
        dist.get_world_size(),
    )
    return True


def init_cpu_distributed(launcher: str) -> bool:
    """Starts a gloo process group when launched by torchrun on a machine without GPUs.

    Args:
        launcher: The tools' ``--launcher`` value.

    Returns:
        True when this call started the process group.
    """
    if launcher != "pytorch" or torch.cuda.is_available():
        return False
    return init_process_group("cpu")


def init_distributed(launcher: str, cfg: Config) -> None:
    """Starts the process group of a distributed launch before the runner is built (the
    runner then uses it), so that the ranks can agree on :func:`claim_work_dir` first.

    Without GPUs, ``--launcher pytorch`` is :func:`init_cpu_distributed` (mmengine's start-up
    would call ``torch.cuda.set_device``); otherwise mmengine's ``init_dist`` with the
    config's ``env_cfg.dist_cfg``, as the runner would call it.
    """
    if launcher == "none" or is_distributed() or init_cpu_distributed(launcher):
        return
    init_dist(launcher, **cfg.get("env_cfg", {}).get("dist_cfg", {}))


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
