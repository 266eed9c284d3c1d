"""mmengine's checkpoint writing made atomic: a file backend and a ``CheckpointHook``."""

from __future__ import annotations

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
