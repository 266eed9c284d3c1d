"""Runtime helpers for mmengine runs on torch >= 2.6: safe resume, atomic checkpoints, CPU.

- :func:`allow_mmengine_checkpoint_types` (defined in :mod:`repvgg_seg.checkpoint`, the one
  allow-list) lets ``torch.load(weights_only=True)`` (the default since torch 2.6, which
  mmengine 0.10 relies on) read mmengine's own training checkpoints.
- :class:`AtomicCheckpointRunner` (the default ``runner_type`` of our configs) keeps a
  training's work dir consistent: every checkpoint goes through :mod:`repvgg_seg.atomic_io`
  (complete or absent, never half-written), a lock lets only one training use the work dir
  (:class:`~repvgg_seg.work_dir.WorkDirLock`), an earlier run's checkpoints are never mixed
  with a new run's (:func:`~repvgg_seg.work_dir.plan_training_start`), temporary files of
  killed runs are removed at the start, ``--resume`` falls back to the newest readable
  ``iter_<n>.pth`` when ``last_checkpoint`` is empty or names an incomplete file, and the
  best checkpoint is replaced by writing the new one before the old one is removed
  (:class:`AtomicCheckpointHook`).
- :func:`claim_work_dir`: the same lock and checks, taken before the runner is built, so
  that a refused run changes nothing in the work dir (mmengine's runner writes its config
  and log there as it is built).
- :func:`init_distributed` and :func:`configure_for_cpu` make ``--launcher pytorch``
  work on a machine without GPUs (gloo; mmengine's own start-up calls
  ``torch.cuda.set_device`` and passes GPU ``device_ids`` to DistributedDataParallel).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.dist import broadcast_object_list, init_dist, is_distributed, is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS, RUNNERS
from mmengine.runner import Runner

from .atomic_io import write_atomically
from .checkpoint import allow_mmengine_checkpoint_types, read_checkpoint
from .work_dir import (
    EarlierRunError,
    TrainingStart,
    WorkDirBusyError,
    WorkDirLock,
    checkpoint_to_resume,
    plan_training_start,
    remove_leftovers,
)

__all__ = [
    "AtomicCheckpointHook",
    "AtomicCheckpointRunner",
    "EarlierRunError",
    "NothingToTrainError",
    "WorkDirBusyError",
    "allow_mmengine_checkpoint_types",
    "claim_work_dir",
    "configure_for_cpu",
    "init_cpu_distributed",
    "init_distributed",
]

logger = logging.getLogger(__name__)


class NothingToTrainError(ValueError):
    """The config asks for a training of zero iterations."""


# The real paths of the work dirs this process's claim_work_dir calls hold (on every rank).
_CLAIMED: set[str] = set()


@contextlib.contextmanager
def claim_work_dir(
    work_dir: str,
    resume: bool,
    resume_from: str | None,
    start_over: bool,
    log: logging.Logger = logger,
) -> Iterator[TrainingStart]:
    """Holds a training's work dir for the duration: its lock, and the decision how the run
    begins (:func:`~repvgg_seg.work_dir.plan_training_start`).

    Rank 0 takes the lock and decides; every rank gets the same decision or error, so call
    it on every rank, after the process group is up (:func:`init_distributed`). A refused
    claim changes nothing in the work dir. :class:`AtomicCheckpointRunner` trains inside a
    claim without taking its own. ``log`` gets the warnings (a lock taken over, files
    removed to start over).

    Raises:
        WorkDirBusyError: Another live training holds the work dir.
        EarlierRunError: The work dir holds an earlier run's checkpoints, and neither
            ``resume`` nor ``start_over`` is set.
        CheckpointError: ``resume`` without a file, and no checkpoint of the work dir can
            be resumed.
    """
    lock = None
    outcome: TrainingStart | BaseException
    if is_main_process():
        lock = WorkDirLock(work_dir)
        try:
            outcome = _plan_under_lock(lock, resume, resume_from, start_over, log)
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
    lock: WorkDirLock, resume: bool, resume_from: str | None, start_over: bool, log
) -> TrainingStart:
    try:
        stale = lock.acquire()
    except OSError as failure:  # a file system without flock
        log.warning(
            f"Cannot lock work dir '{lock.work_dir}' ({failure}); a second training started "
            "in it would not be refused."
        )
    else:
        if stale is not None:
            log.warning(
                f"Took over the lock of work dir '{lock.work_dir}' from a run that ended "
                f"without releasing it ({stale})."
            )
    start = plan_training_start(lock.work_dir, resume, resume_from, start_over)
    for path in start.removed:
        log.warning(f"Removed {path} of the earlier run (starting over).")
    return start


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend; it writes through :mod:`repvgg_seg.atomic_io`."""

    def put(self, obj: bytes, filepath) -> None:
        write_atomically(filepath, lambda file: file.write(obj))

    def put_text(self, obj: str, filepath, encoding: str = "utf-8") -> None:
        write_atomically(filepath, lambda file: file.write(obj.encode(encoding)))


ATOMIC_BACKEND = "repvgg_seg_atomic_local"
register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)


class _RemovalsDeferred:
    """The hook's file backend with ``remove``/``rmtree`` recorded instead of done."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.removed: list[str] = []

    def __getattr__(self, name: str):
        return getattr(self.backend, name)

    def remove(self, filepath) -> None:
        self.removed.append(filepath)

    def rmtree(self, dir_path) -> None:
        self.removed.append(dir_path)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` that never leaves the work dir without a best checkpoint.

    mmengine removes the previous ``best_<metric>_iter_<n>.pth`` before it writes the new
    one, so a run killed in between has none. Here the removal waits until the new file is
    complete. Local files are written through :mod:`repvgg_seg.atomic_io`.
    :class:`AtomicCheckpointRunner` uses this hook wherever a config names ``CheckpointHook``.
    """

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if type(self.file_backend) is LocalBackend:
            self.file_backend = AtomicLocalBackend()

    def _save_best_checkpoint(self, runner, metrics) -> None:
        backend = self.file_backend
        self.file_backend = deferred = _RemovalsDeferred(backend)
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            self.file_backend = backend
        # Only reached when the new best checkpoint was written.
        # mmengine keeps best_ckpt_path for one metric, best_ckpt_path_dict for several.
        current = {getattr(self, "best_ckpt_path", None)}
        current.update(getattr(self, "best_ckpt_path_dict", {}).values())
        for path in deferred.removed:
            if path in current:  # the same name again (validated twice at one iteration)
                continue
            if backend.isfile(path):
                backend.remove(path)
            elif backend.isdir(path):
                backend.rmtree(path)


@RUNNERS.register_module()
class AtomicCheckpointRunner(Runner):
    """mmengine's ``Runner`` that keeps a training's work dir consistent.

    Select it with ``runner_type = 'AtomicCheckpointRunner'`` in a config (the default in
    ``configs/_base_/default_runtime.py``). :meth:`train` holds a lock on the work dir for the
    whole run (rank 0 takes it; all ranks stop when it is taken), removes temporary files
    of killed runs, and refuses a schedule of zero iterations.
    """

    def register_default_hooks(self, hooks=None) -> None:
        hooks = dict(hooks or {})
        checkpoint = hooks.get("checkpoint", dict(type="CheckpointHook", interval=1))
        if isinstance(checkpoint, dict) and checkpoint.get("type") in (
            "CheckpointHook",
            CheckpointHook,
        ):
            hooks["checkpoint"] = {**checkpoint, "type": AtomicCheckpointHook}
        super().register_default_hooks(hooks)

    def save_checkpoint(self, out_dir: str, filename: str, file_client_args=None, *args, **kwargs):
        """``Runner.save_checkpoint``; local files are written by :mod:`repvgg_seg.atomic_io`."""
        local = "://" not in str(out_dir)
        if local and file_client_args is None and kwargs.get("backend_args") is None:
            kwargs["backend_args"] = dict(backend=ATOMIC_BACKEND)
        super().save_checkpoint(out_dir, filename, file_client_args, *args, **kwargs)

    def train(self) -> torch.nn.Module:
        """``Runner.train`` while holding the work dir's lock, after removing leftovers.

        The work dir is claimed here (:func:`claim_work_dir`) unless the caller claimed it
        already; only that way can a run start over in a work dir holding an earlier run.

        Raises:
            NothingToTrainError: ``train_cfg`` asks for zero (or fewer) iterations or epochs.
            WorkDirBusyError: Another live training holds the work dir (on every rank).
            EarlierRunError: The work dir holds an earlier run's checkpoints and this run
                does not resume.
        """
        self._check_schedule()
        claimed = os.path.realpath(self.work_dir) in _CLAIMED
        with contextlib.nullcontext() if claimed else self._claim():
            if is_main_process():
                for path in remove_leftovers(self.work_dir):
                    self.logger.warning(f"Removed {path}, left by a run killed while saving.")
            return super().train()

    def _claim(self) -> contextlib.AbstractContextManager:
        resume_from = self._load_from if self._resume else None
        return claim_work_dir(
            self.work_dir, self._resume, resume_from, start_over=False, log=self.logger
        )

    def _check_schedule(self) -> None:
        loop = self._train_loop
        if not isinstance(loop, dict):
            return
        for key in ("max_iters", "max_epochs"):
            if loop.get(key) is not None and loop[key] <= 0:
                raise NothingToTrainError(
                    f"train_cfg.{key} is {loop[key]}: this run would train nothing. Set it to "
                    f"a positive number (e.g. --cfg-options train_cfg.{key}=1000)."
                )

    def load_or_resume(self) -> None:
        """mmengine's, except how ``--resume`` finds and reads its checkpoint.

        Without a file, it continues from :func:`~repvgg_seg.work_dir.checkpoint_to_resume`
        (logging any file passed over); a file that cannot be read raises
        :class:`~repvgg_seg.checkpoint.CheckpointError` naming it.
        """
        if self._has_loaded or not self._resume:
            super().load_or_resume()
            return
        path = self._load_from
        if path is None:
            choice = checkpoint_to_resume(self.work_dir)
            for reason in choice.skipped:
                self.logger.warning(f"--resume: passed over: {reason.rstrip('.')}.")
            if choice.path is None:
                self.logger.info(
                    f"--resume: no checkpoint in '{self.work_dir}'; training from the start."
                )
                return
            if choice.fell_back:
                self.logger.warning(f"--resume: using the newest readable {choice.path}.")
            path = choice.path
        try:
            self.resume(path)
        except Exception:
            read_checkpoint(path)  # a CheckpointError naming the file, when that is the cause
            raise
        self._has_loaded = True


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
