"""Checkpoints and metrics files of a pretraining run, all written atomically.

Files in the output directory:

- ``checkpoint.pth``: the last epoch, torchvision-style: ``model``, ``optimizer``,
  ``lr_scheduler``, ``epoch``, ``scaler``, ``args`` and, with ``--model-ema``, ``model_ema``
  (same keys as ``model``) and ``model_ema_updates``.
- ``model_best.pth``: the same for the epoch with the best validation top-1.
- ``model_deploy.pth``: ``{'model': fused state dict, 'deploy': True, 'arch': 'A0',
  'num_classes': N}``.
- ``metrics.jsonl``: one JSON object per epoch.

Everything is plain tensors, numbers, strings and lists, so it loads with
``torch.load(..., weights_only=True)`` (:func:`repvgg_seg.checkpoint.read_checkpoint`); the
``model`` entry's ``backbone.*`` keys initialize the segmentation backbone directly.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..atomic_io import write_atomically
from ..checkpoint import CheckpointError, read_checkpoint
from ..errors import UsageError

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pth"
BEST_NAME = "model_best.pth"
DEPLOY_NAME = "model_deploy.pth"
METRICS_NAME = "metrics.jsonl"

# Keys every training checkpoint written here has; --resume checks them.
TRAINING_KEYS = ("model", "optimizer", "lr_scheduler", "epoch", "args")


def read_pretraining_checkpoint(path: str | Path) -> dict:
    """A checkpoint of this package's classifier (a dict with a ``model`` entry).

    Read by :func:`repvgg_seg.checkpoint.read_checkpoint` (CPU, ``weights_only=True``).

    Raises:
        CheckpointError: The file is missing (also a FileNotFoundError), unreadable, or has
            no ``model`` entry.
    """
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, Mapping) or "model" not in checkpoint:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} has no 'model' entry; pass a file written by "
            "tools/pretrain_imagenet.py (checkpoint.pth, model_best.pth or model_deploy.pth)."
        )
    return dict(checkpoint)


def check_resumable(checkpoint: Mapping, path: str | Path) -> None:
    """Raises ValueError naming the missing keys if ``checkpoint`` cannot resume training."""
    missing = [key for key in TRAINING_KEYS if key not in checkpoint]
    if missing:
        raise UsageError(
            f"--resume {path} is missing {', '.join(missing)}: it is not a training checkpoint "
            f"(model_deploy.pth or a weights-only file cannot resume). Use {CHECKPOINT_NAME}."
        )


def deployed_checkpoint_dict(fused_state_dict: Mapping, arch: str, num_classes: int) -> dict:
    """What ``model_deploy.pth`` holds (only builds the dict; the caller saves it)."""
    return {
        "model": dict(fused_state_dict),
        "deploy": True,
        "arch": arch,
        "num_classes": num_classes,
    }


def read_metrics(path: str | Path) -> list[dict]:
    """The per-epoch records of a ``metrics.jsonl`` (empty if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(path: str | Path, completed_epochs: int) -> None:
    """Keeps only the records of epochs ``1..completed_epochs`` (records count from 1).

    A run resumed after N completed epochs re-runs epoch N+1; a record of it written just
    before the interruption would otherwise appear twice.
    """
    path = Path(path)
    records = read_metrics(path)
    kept = [r for r in records if r["epoch"] <= completed_epochs]
    if len(kept) != len(records):
        text = "".join(json.dumps(r) + "\n" for r in kept)
        write_atomically(path, lambda file: file.write(text.encode()))


def append_metrics(path: str | Path, record: Mapping[str, Any]) -> None:
    """Appends one JSON line (a line is small, so an append is effectively atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as file:
        file.write(json.dumps(dict(record)) + "\n")
        file.flush()
        os.fsync(file.fileno())
