"""Runtime helpers for mmengine runs on torch >= 2.6: safe resume, atomic checkpoints, CPU.

- :func:`allow_mmengine_checkpoint_types` lets ``torch.load(weights_only=True)`` (the
  default since torch 2.6, which mmengine 0.10 relies on) read mmengine's own training
  checkpoints, by allow-listing exactly the types that they contain. The safety check stays
  on for everything else.
- :class:`AtomicCheckpointRunner` writes every checkpoint to a temporary file and renames it,
  so a run killed while saving never leaves a truncated ``iter_N.pth`` behind.
- :func:`init_cpu_distributed` starts a gloo process group for ``--launcher pytorch`` on a
  machine without GPUs (mmengine's own start-up calls ``torch.cuda.set_device``).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
import torch.distributed as dist
from mmengine.logging import HistoryBuffer
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

logger = logging.getLogger(__name__)


def _numpy_types() -> list:
    """numpy objects pickled into message-hub entries (arrays and scalars of the log)."""
    # numpy 2 moved numpy.core to numpy._core; pickles name whichever wrote them.
    multiarray = getattr(np, "_core", None) or np.core
    types = [np.ndarray, np.dtype, multiarray.multiarray._reconstruct]
    types.append(multiarray.multiarray.scalar)
    types += [type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32", "bool")]
    return types


def allow_mmengine_checkpoint_types() -> None:
    """Allow-lists the non-tensor types of mmengine checkpoints for ``torch.load``.

    mmengine saves its ``MessageHub`` state (``HistoryBuffer`` objects holding numpy arrays of
    the logged losses and learning rates) with each checkpoint, and loads checkpoints with
    ``torch.load``'s default ``weights_only=True``, so ``--resume`` fails on torch >= 2.6
    unless these exact types are allowed. Idempotent.
    """
    torch.serialization.add_safe_globals([HistoryBuffer, *_numpy_types()])


@RUNNERS.register_module()
class AtomicCheckpointRunner(Runner):
    """mmengine's ``Runner`` whose checkpoints appear complete or not at all.

    Select it with ``runner_type = 'AtomicCheckpointRunner'`` in a config (the default in
    ``configs/_base_/default_runtime.py``).
    """

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
