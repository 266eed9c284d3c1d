"""``AtomicCheckpointRunner``: mmengine's runner that keeps a training's work dir consistent."""

from __future__ import annotations

import contextlib

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ..checkpoint import read_checkpoint
from ..work_dir import checkpoint_to_resume, remove_leftovers
from .checkpoint_hook import ATOMIC_BACKEND, AtomicCheckpointHook
from .claim import claim_work_dir, is_claimed


class NothingToTrainError(ValueError):
    """The config asks for a training of zero iterations."""


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
        claimed = is_claimed(self.work_dir)
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
