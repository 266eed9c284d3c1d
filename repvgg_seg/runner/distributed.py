"""Distributed start-up of the mmengine tools, on machines with and without GPUs."""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.dist import init_dist, is_distributed

logger = logging.getLogger(__name__)


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


def init_distributed(launcher: str, cfg: Config) -> None:
    """Starts the process group of a distributed launch before the runner is built (the
    runner then uses it), so that the ranks can agree on :func:`claim_work_dir` first.

    Without GPUs this is :func:`init_cpu_distributed`; with them, mmengine's ``init_dist``
    with the config's ``env_cfg.dist_cfg``, as the runner would call it.
    """
    if launcher == "none" or is_distributed():
        return
    if not torch.cuda.is_available():
        init_cpu_distributed(launcher)
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
