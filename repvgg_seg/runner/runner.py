"""``AtomicCheckpointRunner``: mmengine's runner that keeps a training's work dir consistent."""

from __future__ import annotations

import contextlib
import os

import torch
from mmengine.config import Config
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.model import is_model_wrapper
from mmengine.registry import RUNNERS
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint_to_model

from ..checkpoint import read_checkpoint
from ..errors import UsageError
from ..loader import check_finite_weights, check_resumable, segmentor_state
from ..weights import resolve_checkpoint
from ..weights.table import NAME_SCHEME
from ..work_dir import checkpoint_to_resume, remove_leftovers
from .checkpoint_hook import ATOMIC_BACKEND, AtomicCheckpointHook
from .claim import claim_work_dir, is_claimed

# mmengine's default: the keys of a DistributedDataParallel wrapper lose their prefix.
_DDP_KEYS = ((r"^module\.", ""),)


@CheckpointLoader.register_scheme(prefixes="", force=True)
def _read_local_checkpoint(filename: str, map_location=None) -> object:
    """mmengine's reader of local files, replaced by the package's one reader (on CPU).

    mmengine reads local checkpoints for more than the runner: a ``Pretrained`` init_cfg of a
    module other than the RepVGG backbone (a ResNet's), ``mmengine.runner.load_checkpoint``.
    """
    return read_checkpoint(os.path.expanduser(filename))


class NothingToTrainError(UsageError):
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
            UsageError: ``train_dataloader.batch_size`` is not a positive whole number.
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
        loader = self._train_dataloader
        batch_size = loader.get("batch_size", 1) if isinstance(loader, dict) else 1
        if not isinstance(batch_size, int) or batch_size <= 0:  # else torch's bare ValueError
            raise UsageError(
                f"train_dataloader.batch_size is {batch_size!r}: set a positive whole number "
                "(e.g. --cfg-options train_dataloader.batch_size=2)."
            )
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
        """mmengine's, except how ``--resume`` finds its checkpoint.

        Without a file, it continues from :func:`~repvgg_seg.work_dir.checkpoint_to_resume`
        (logging any file passed over). Reading and loading are :meth:`load_checkpoint`'s.
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
        self.resume(path)
        self._has_loaded = True

    def load_checkpoint(
        self, filename: str, map_location="cpu", strict: bool = False, revise_keys=_DDP_KEYS
    ) -> dict:
        """``Runner.load_checkpoint`` (``load_from`` and ``--resume``) through the package's
        one reader (:func:`~repvgg_seg.checkpoint.read_checkpoint`, on CPU).

        A resumed checkpoint must fit the model strictly
        (:func:`~repvgg_seg.loader.check_resumable`); ``load_from`` keeps mmengine's
        non-strict load (fine-tuning from another model), but NaN/Inf weights stop both.

        Raises:
            CheckpointError: The file cannot be read, holds NaN/Inf weights, or (resuming)
                does not fit the model; the message names the file.
        """
        path = local_checkpoint(filename)
        contents = read_checkpoint(path)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        if self._resume:
            check_resumable(self.cfg, path, contents=contents, model=model)
            strict = True
        else:
            check_finite_weights(segmentor_state(contents, path), path)
        self.call_hook("after_load_checkpoint", checkpoint=contents)
        contents = _load_checkpoint_to_model(model, contents, strict, revise_keys=revise_keys)
        self._has_loaded = True
        self.logger.info(f"Load checkpoint from {filename}")
        return contents


def check_resume(cfg: Config) -> None:
    """Refuses a ``--resume`` whose checkpoint does not fit ``cfg``'s model, before the
    runner is built (building it writes into the work dir, which a refused run leaves as it
    was). The runner checks again as it loads (:meth:`AtomicCheckpointRunner.load_checkpoint`).

    Raises:
        CheckpointError: See :func:`~repvgg_seg.loader.check_resumable`.
    """
    path = cfg.get("load_from") or checkpoint_to_resume(cfg.work_dir).path
    if path is not None:
        check_resumable(cfg, local_checkpoint(path))


def local_checkpoint(spec: str | os.PathLike) -> str:
    """The local file of a ``load_from`` or ``--resume`` value: a path as it is (the reader
    names what is wrong with it), a URL or ``repvgg:NAME`` downloaded into the cache."""
    spec = os.fspath(spec)
    if "://" in spec or spec.startswith(NAME_SCHEME):
        return os.fspath(resolve_checkpoint(spec))
    return spec
