"""mmengine's checkpoint writing made atomic: a file backend and a ``CheckpointHook``."""

from __future__ import annotations

import os

from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from ..atomic_io import write_atomically


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
        if isinstance(self.file_backend, LocalBackend):
            self._forget_best_outside(runner)

    def _forget_best_outside(self, runner) -> None:
        """Drops a resumed run's best checkpoint that lies outside this run's folder.

        mmengine restores ``best_ckpt`` from the resumed checkpoint's message hub and removes
        that file at the next new best: resuming another run's ``iter_<n>.pth`` would delete
        that run's best checkpoint, in a folder this run neither owns nor locks.
        """
        outside = []
        if getattr(self, "best_ckpt_path", None) and not self._is_own(self.best_ckpt_path):
            outside.append(self.best_ckpt_path)
            self.best_ckpt_path = None
        by_metric = getattr(self, "best_ckpt_path_dict", {})
        for metric, path in by_metric.items():
            if path and not self._is_own(path):
                outside.append(path)
                by_metric[metric] = None
        for path in outside:
            runner.logger.info(
                f"The resumed run's best checkpoint {path} is outside this run's folder "
                f"{self.out_dir}: it stays as it is; a new best one goes to {self.out_dir}."
            )

    def _is_own(self, path: str) -> bool:
        """Whether ``path`` lies directly in this hook's checkpoint folder."""
        own = os.path.realpath(self.out_dir)
        return os.path.dirname(os.path.realpath(path)) == own

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
            if isinstance(backend, LocalBackend) and not self._is_own(path):
                continue  # never another folder's file, whatever the message hub says
            if backend.isfile(path):
                backend.remove(path)
            elif backend.isdir(path):
                backend.rmtree(path)
