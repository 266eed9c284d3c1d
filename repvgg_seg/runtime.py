"""Runtime helpers for mmengine runs on torch >= 2.6: safe resume, atomic checkpoints, CPU.

- :func:`allow_mmengine_checkpoint_types` lets ``torch.load(weights_only=True)`` (the
  default since torch 2.6, which mmengine 0.10 relies on) read mmengine's own training
  checkpoints, by allow-listing exactly the types that they contain. The safety check stays
  on for everything else.
- :class:`AtomicCheckpointRunner` writes every checkpoint to a temporary file and renames it,
  so a run killed while saving never leaves a truncated ``iter_N.pth`` behind.
- :func:`init_cpu_distributed` and :func:`configure_for_cpu` make ``--launcher pytorch``
  work on a machine without GPUs (gloo; mmengine's own start-up calls
  ``torch.cuda.set_device`` and passes GPU ``device_ids`` to DistributedDataParallel).
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle

import numpy as np
import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.dist import master_only
from mmengine.logging import HistoryBuffer
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

logger = logging.getLogger(__name__)


def _numpy_types() -> list:
    """numpy objects pickled into message-hub entries (arrays and scalars of the log)."""
    # numpy 2 moved numpy.core to numpy._core; pickles name whichever wrote them.
    package = "numpy._core" if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else "numpy.core"
    multiarray = importlib.import_module(f"{package}.multiarray")
    types = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    types += [type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32", "bool")]
    return types


def _history_buffer_statistic(owner: object, name: str):
    """``getattr`` as the unpickler may use it: only to fetch HistoryBuffer's statistics.

    A ``HistoryBuffer`` pickles its statistics methods (``min``, ``max``, ``current``,
    ``mean``) as ``getattr(HistoryBuffer, 'min')``. Allowing the real ``getattr`` would let a
    crafted file reach any attribute of any allowed object, so this stand-in is registered
    under the name ``builtins.getattr`` instead.
    """
    allowed = {"min", "max", "current", "mean", *HistoryBuffer._statistics_methods}
    if owner is HistoryBuffer and name in allowed:
        return getattr(owner, name)
    raise pickle.UnpicklingError(
        f"Refusing getattr({owner!r}, {name!r}) while loading a checkpoint: only "
        "HistoryBuffer statistics methods are allowed (repvgg_seg.runtime)."
    )


def allow_mmengine_checkpoint_types() -> None:
    """Allow-lists the non-tensor types of mmengine checkpoints for ``torch.load``.

    mmengine saves its ``MessageHub`` state (``HistoryBuffer`` objects holding numpy arrays of
    the logged losses and learning rates) with each checkpoint, and loads checkpoints with
    ``torch.load``'s default ``weights_only=True``, so ``--resume`` fails on torch >= 2.6
    unless these exact types are allowed. Idempotent.
    """
    torch.serialization.add_safe_globals(
        [HistoryBuffer, *_numpy_types(), (_history_buffer_statistic, "builtins.getattr")]
    )


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
