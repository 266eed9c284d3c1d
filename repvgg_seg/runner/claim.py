"""Claiming a training's work dir before the runner is built: its lock and how the run begins.

The claim is :class:`repvgg_seg.output_dir.OutputDir`'s (the one owner of output folders):
the lock, the record of the files trainings wrote, and the removal of a killed run's marked
leftovers. A refused claim changes nothing in the work dir (mmengine's runner writes its
config and log there as it is built, so the claim comes first). Rank 0 takes the lock and
decides; every rank gets the same decision or error.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator

from mmengine.config import Config
from mmengine.dist import broadcast_object_list, is_distributed, is_main_process

from ..dir_lock import TRAINING, LockRole
from ..output_dir import RECORD_NAME, OutputDir, describe_removed, held_claim
from ..work_dir import TrainingStart, WorkDirBusyError, plan_training_start
from .adopt import adopt_earlier_release

logger = logging.getLogger(__name__)

# The real paths of the work dirs this process's claim_work_dir calls hold (on every rank).
_CLAIMED: set[str] = set()


@contextlib.contextmanager
def claim_work_dir(
    work_dir: str,
    resume: bool,
    resume_from: str | None,
    start_over: bool,
    log: logging.Logger = logger,
    outputs: Iterable[str] = (),
    role: LockRole = TRAINING,
    config: Config | None = None,
) -> Iterator[TrainingStart]:
    """Holds a training's work dir for the duration: its lock, and the decision how the run
    begins (:func:`~repvgg_seg.work_dir.plan_training_start`).

    Rank 0 takes the lock and decides; every rank gets the same decision or error, so call
    it on every rank, after the process group is up (:func:`init_distributed`). A refused
    claim changes nothing in the work dir. :class:`AtomicCheckpointRunner` trains inside a
    claim without taking its own. ``log`` gets the warnings (a lock taken over, files
    removed to start over). With ``config`` (tools/train.py), a work dir of an earlier
    release, without a record, is adopted when its files are exactly a training's of that
    config (:mod:`repvgg_seg.runner.adopt`).

    Raises:
        WorkDirBusyError: Another live training holds the work dir.
        EarlierRunError: The work dir holds an earlier run's checkpoints, and neither
            ``resume`` nor ``start_over`` is set.
        NotWrittenByToolError: A file the run would replace or delete is not a tool's.
        CheckpointError: ``resume`` without a file, and no checkpoint of the work dir can
            be resumed.
    """
    lock = None
    outcome: TrainingStart | BaseException
    if is_main_process():
        lock = OutputDir(work_dir, role)
        try:
            outcome = _plan_under_lock(lock, resume, resume_from, start_over, log, outputs, config)
        except (WorkDirBusyError, ValueError) as error:  # EarlierRunError, CheckpointError
            outcome = error
        except BaseException:
            lock.release()
            raise
        if isinstance(outcome, BaseException):
            lock.release()
    if is_distributed():
        shared = [outcome if is_main_process() else None]
        broadcast_object_list(shared, src=0)
        outcome = shared[0]
    if isinstance(outcome, BaseException):
        raise outcome
    key = os.path.realpath(work_dir)
    _CLAIMED.add(key)
    try:
        yield outcome
    finally:
        _CLAIMED.discard(key)
        if lock is not None:
            lock.release()


def _plan_under_lock(
    claim: OutputDir,
    resume: bool,
    resume_from: str | None,
    start_over: bool,
    log,
    outputs: Iterable[str],
    config: Config | None,
) -> TrainingStart:
    try:
        claim.acquire()
    except OSError as failure:  # a file system without flock
        log.warning(
            f"Cannot lock work dir '{claim.path}' ({failure}); a second training started "
            "in it would not be refused."
        )
    else:
        if claim.stale_owner is not None:
            log.warning(
                f"Took over the lock of work dir '{claim.path}' from a run that ended "
                f"without releasing it ({claim.stale_owner})."
            )
    if config is not None:
        _adopt(claim, config, log)
    start = plan_training_start(
        claim.path, resume, resume_from, start_over, outputs, record=claim.record
    )
    if start.removed:
        log.warning(describe_removed(start.removed, "files of the earlier run (starting over)"))
    return start


def _adopt(claim: OutputDir, config: Config, log) -> None:
    adopted, why_not = adopt_earlier_release(claim, config, config_dump_name(config))
    earlier = f"Work dir '{claim.path}' has no {RECORD_NAME} (an earlier release's work dir)"
    if adopted:
        names = ", ".join(path.name for path in adopted)
        log.warning(f"{earlier}: adopted as a training's, its files are this config's: {names}.")
    elif why_not:
        log.warning(f"{earlier}: not adopted, {why_not}.")


def config_dump_name(cfg: Config) -> str | None:
    """The file mmengine's runner dumps the config to in the work dir (``Runner.dump_config``),
    or None when it gets a new time-stamped name."""
    return os.path.basename(cfg.filename) if cfg.filename else None


def record_config_dump(cfg: Config) -> None:
    """Records the config dump of a runner built inside :func:`claim_work_dir` as the
    training's file (mmengine writes it, not :mod:`repvgg_seg.atomic_io`)."""
    claim = held_claim(cfg.work_dir)
    name = config_dump_name(cfg)
    if claim is not None and name is not None:
        claim.record_written([os.path.join(cfg.work_dir, name)])


def is_claimed(work_dir: str) -> bool:
    """Whether this process holds ``work_dir`` through :func:`claim_work_dir`."""
    return os.path.realpath(work_dir) in _CLAIMED
