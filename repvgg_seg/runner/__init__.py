"""The mmengine runner set-up for on torch >= 2.6: safe resume, atomic checkpoints, CPU.

- :func:`allow_mmengine_checkpoint_types` (defined in :mod:`repvgg_seg.checkpoint`, the one
  allow-list) lets ``torch.load(weights_only=True)`` (the default since torch 2.6, which
  mmengine 0.10 relies on) read mmengine's own training checkpoints.
- :class:`AtomicCheckpointRunner` (the default ``runner_type`` of our configs) keeps a
  training's work dir consistent: every checkpoint goes through :mod:`repvgg_seg.atomic_io`
  (complete or absent, never half-written), a lock lets only one training use the work dir
  (:class:`~repvgg_seg.dir_lock.WorkDirLock`), an earlier run's checkpoints are never mixed
  with a new run's (:func:`~repvgg_seg.work_dir.plan_training_start`), temporary files of
  killed runs are removed at the start, ``--resume`` falls back to the newest readable
  ``iter_<n>.pth`` when ``last_checkpoint`` is empty or names an incomplete file, and the
  best checkpoint is replaced by writing the new one before the old one is removed, never
  another folder's (:class:`AtomicCheckpointHook`). ``load_from`` and ``--resume`` are read
  by :func:`~repvgg_seg.checkpoint.read_checkpoint`, and a resumed checkpoint must fit the
  model as strictly as ``tools/test.py`` loads (:func:`~repvgg_seg.loader.check_resumable`).
- :func:`claim_work_dir`: the same lock and checks, taken before the runner is built, so
  that a refused run changes nothing in the work dir (mmengine's runner writes its config
  and log there as it is built); :func:`check_resume` refuses a checkpoint that does not fit
  there too.
- :func:`~repvgg_seg.runner.distributed.init_process_group` is the package's one
  distributed start-up (pretraining calls it too); :func:`init_distributed` and
  :func:`configure_for_cpu` make ``--launcher pytorch`` work on a machine without GPUs
  (gloo; mmengine's own start-up calls ``torch.cuda.set_device`` and passes GPU
  ``device_ids`` to DistributedDataParallel).
"""

from __future__ import annotations

from ..checkpoint import allow_mmengine_checkpoint_types
from ..work_dir import EarlierRunError, WorkDirBusyError
from .checkpoint_hook import AtomicCheckpointHook
from .claim import claim_work_dir
from .distributed import configure_for_cpu, init_cpu_distributed, init_distributed
from .runner import AtomicCheckpointRunner, NothingToTrainError, check_resume

__all__ = [
    "AtomicCheckpointHook",
    "AtomicCheckpointRunner",
    "EarlierRunError",
    "NothingToTrainError",
    "WorkDirBusyError",
    "allow_mmengine_checkpoint_types",
    "check_resume",
    "claim_work_dir",
    "configure_for_cpu",
    "init_cpu_distributed",
    "init_distributed",
]
