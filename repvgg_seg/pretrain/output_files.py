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

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch.distributed as dist

from ..atomic_io import write_atomically
from ..checkpoint import CheckpointError, read_checkpoint
from ..dir_lock import LockRole
from ..errors import UsageError
from ..output_dir import OutputDir, describe_removed, held_claim

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pth"
BEST_NAME = "model_best.pth"
DEPLOY_NAME = "model_deploy.pth"
METRICS_NAME = "metrics.jsonl"
# The files a run replaces, appends to or writes in its output dir.
OUTPUT_NAMES = (CHECKPOINT_NAME, BEST_NAME, DEPLOY_NAME, METRICS_NAME)
# --output-dir's lock (.pretrain.lock); the record names its files' writer "pretrain".
PRETRAINING = LockRole(".pretrain.lock", "--output-dir", "another pretraining", "--output-dir")

# Keys every training checkpoint written here has; --resume checks them.
TRAINING_KEYS = ("model", "optimizer", "lr_scheduler", "epoch", "args")


@contextlib.contextmanager
def claim_output_dir(output_dir: str | None, is_main: bool, distributed: bool) -> Iterator[None]:
    """Holds ``--output-dir`` for a run, as a training holds its work dir
    (:class:`~repvgg_seg.output_dir.OutputDir`): one pretraining at a time, the record of
    the files it wrote, a killed run's leftovers removed by its marker (said in one line),
    and a file of :data:`OUTPUT_NAMES` that no tool wrote refused before any work.

    Rank 0 claims (only it writes); every process gets its refusal.

    Raises:
        WorkDirBusyError: Another live pretraining writes into ``output_dir``.
        NotWrittenByToolError: A file of the run's names there was not written by a tool.
    """
    claim, refusal = None, None
    if is_main and output_dir:
        claim = OutputDir(output_dir, PRETRAINING)
        try:
            claim.acquire()
            claim.refuse_foreign([claim.path / name for name in OUTPUT_NAMES])
        except UsageError as error:
            claim.release()
            claim, refusal = None, error
    if distributed:
        shared = [refusal]
        dist.broadcast_object_list(shared, src=0)
        refusal = shared[0]
    if refusal is not None:
        raise refusal
    if claim is not None and claim.removed_leftovers:
        logger.info(describe_removed(claim.removed_leftovers, "leftovers of a killed run"))
    try:
        yield
    finally:
        if claim is not None:
            claim.release()


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
    claim = held_claim(path.parent)
    if claim is not None:  # appended in place: the record learns its new size
        claim.record_written([path])
