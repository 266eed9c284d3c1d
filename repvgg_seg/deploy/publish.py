"""Where a deploy writes: one run per output folder, and a consistent set of files in it.

A deploy stages its files in a hidden folder inside the output folder and renames them into
place only when every check passed. :class:`OutputFolder` makes that safe:

- it refuses, before any work, an output path that is a file, a folder it cannot write,
  and a folder where a file it will write should go (:func:`repvgg_seg.dir_lock.check_out_dir`);
- it holds the folder's lock (:class:`repvgg_seg.dir_lock.WorkDirLock`, ``.<kind>.lock``)
  while the run lasts. The kernel releases it when the process dies, so a second live run
  of the tool into the folder is refused, and staging folders whose run is dead (killed)
  are removed at the start of the next run;
- :meth:`OutputFolder.publish` puts the staged files in place and removes the files of an
  earlier deploy of the same config that this run does not write (an old ``.onnx`` beside
  a new ``.pth``), stale files first and the config last. Each file carries the run's
  ``deploy_id`` (checkpoint meta, config, ONNX metadata); a set mixed by a run killed while
  renaming is refused by :mod:`repvgg_seg.loader` and replaced by the next deploy.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path

from ..dir_lock import LockRole, WorkDirLock, check_out_dir

# The files a deploy of config <stem> writes, in the order they are published: the config,
# which names the checkpoint, comes last.
DEPLOY_SUFFIXES = (".pth", ".onnx", ".py")


def new_deploy_id() -> str:
    """An id shared by the files one deploy run writes (time and 8 random hex digits)."""
    return f"{datetime.datetime.now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def deployed_names(
    stem: str, kind: str = "deploy", suffixes: tuple[str, ...] = DEPLOY_SUFFIXES
) -> list[str]:
    """Every file name a deploy (``kind`` ``"int8"``: a quantization) of config ``stem`` may
    write."""
    return [f"{stem}_{kind}{suffix}" for suffix in suffixes]


class OutputFolder:
    """A deploy's output folder, locked for one run; a context manager.

    Args:
        path: The folder (created if missing).
        stem: The config's stem (names the files and the staging folder).
        kind: Files are ``<stem>_<kind><suffix>`` (tools/quantize.py: ``"int8"``).
        suffixes: The suffixes of the files, in the order they are published.
        tool: The tool writing, for messages.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        stem: str,
        kind: str = "deploy",
        suffixes: tuple[str, ...] = DEPLOY_SUFFIXES,
        tool: str = "tools/deploy.py",
    ) -> None:
        self.path = Path(path)
        self.stem = stem
        self.kind, self.suffixes, self.tool = kind, suffixes, tool
        self.staging: Path | None = None
        self.removed_leftovers: list[Path] = []
        role = LockRole(f".{kind}.lock", "Output folder", f"another {tool} run", "output folder")
        self.lock = WorkDirLock(self.path, role)

    def check(self) -> None:
        """Refuses a path the tool cannot write its files into (nothing is created).

        Raises:
            NotADirectoryError: The path (or a parent) is a file.
            IsADirectoryError: A folder has the name of a file the tool writes.
            PermissionError: The folder (or the nearest existing parent) is not writable.
        """
        names = deployed_names(self.stem, self.kind, self.suffixes)
        check_out_dir(self.path, "Output folder", names, self.tool)

    def __enter__(self) -> OutputFolder:
        """Checks and locks the folder, removes dead runs' staging folders, makes this one's.

        Raises:
            WorkDirBusyError: Another live run of the tool writes into the folder.
        """
        self.check()
        self.lock.acquire()
        try:
            self.removed_leftovers = self._remove_dead_staging()
            self.staging = Path(
                tempfile.mkdtemp(
                    dir=self.path, prefix=f".{self.stem}_{self.kind}.", suffix=".staging"
                )
            )
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        self.lock.release()

    def _remove_dead_staging(self) -> list[Path]:
        """Staging folders of killed runs: every one, since this run holds the lock."""
        removed, staging = [], re.compile(rf"^\..+_{self.kind}\..+\.staging$")
        for path in self.path.iterdir():
            if staging.match(path.name) and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed

    def publish(self, staged: Iterable[Path]) -> list[Path]:
        """Moves the staged files into the folder as this deploy's complete set.

        Files of an earlier deploy of the same config that are not among ``staged`` are
        removed first, then the staged files are renamed in :data:`DEPLOY_SUFFIXES` order.

        Returns:
            The published paths.
        """
        staged = sorted(staged, key=lambda path: self.suffixes.index(path.suffix))
        names = {path.name for path in staged}
        for name in deployed_names(self.stem, self.kind, self.suffixes):
            if name not in names:
                with contextlib.suppress(FileNotFoundError):
                    (self.path / name).unlink()
        published = []
        for path in staged:
            os.replace(path, self.path / path.name)
            published.append(self.path / path.name)
        folder = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(folder)  # the renames reach the disk together with the files
        finally:
            os.close(folder)
        return published
