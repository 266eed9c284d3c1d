"""A training's work directory: one run at a time, no leftovers, a checkpoint to resume.

- :class:`WorkDirLock`: an exclusive lock (``<work_dir>/.train.lock``, holding the owner's
  pid, host and start time) so that two trainings never write into the same work dir. The
  kernel releases it when its process dies, so a killed run's lock is taken over.
- :func:`remove_leftovers`: the temporary files of checkpoints whose writing was killed.
- :func:`checkpoint_to_resume`: ``last_checkpoint`` when it names a readable file, else the
  newest readable ``iter_<n>.pth``.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from .atomic_io import remove_stale_temporaries
from .checkpoint import CheckpointError, read_checkpoint

LOCK_NAME = ".train.lock"
# The name mmengine's CheckpointHook gives iteration checkpoints (filename_tmpl 'iter_{}.pth').
ITERATION_CHECKPOINT = re.compile(r"^iter_(\d+)\.pth$")
# Before repvgg_seg.atomic_io, the runner wrote checkpoints to ".<name>.partial" first.
_OLD_TEMPORARY = re.compile(r"^\..+\.pth\.partial$")


class WorkDirBusyError(RuntimeError):
    """Another live process trains in the same work dir."""


@dataclass(frozen=True)
class LockOwner:
    """Who holds (or held) a work-dir lock, as written in the lock file."""

    pid: int | None
    host: str
    started: str

    def __str__(self) -> str:
        pid = "unknown" if self.pid is None else self.pid
        return f"pid {pid} on host {self.host or 'unknown'}, started {self.started or 'unknown'}"

    @classmethod
    def parse(cls, text: str) -> LockOwner:
        try:
            fields = json.loads(text)
        except ValueError:
            fields = {}
        pid = fields.get("pid") if isinstance(fields, dict) else None
        return cls(
            pid if isinstance(pid, int) else None,
            str(fields.get("host", "")) if isinstance(fields, dict) else "",
            str(fields.get("started", "")) if isinstance(fields, dict) else "",
        )


class WorkDirLock:
    """An exclusive, advisory lock on a work dir, held by one process (``flock``).

    Args:
        work_dir: The directory to lock (created if missing).
    """

    def __init__(self, work_dir: str | os.PathLike) -> None:
        self.work_dir = Path(work_dir)
        self.path = self.work_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> LockOwner | None:
        """Takes the lock.

        Returns:
            The owner of a stale lock that was taken over (its process died without releasing
            it), or None.

        Raises:
            WorkDirBusyError: A live process holds the lock; the message names the work dir,
                that process's pid and host, and what to do.
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this WorkDirLock.")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = LockOwner.parse(_read(fd))
                os.close(fd)
                raise WorkDirBusyError(
                    f"Work dir '{self.work_dir}' is in use by another training ({owner}; lock "
                    f"file {self.path}). Wait for that run to end or stop it, or pass another "
                    "--work-dir."
                ) from None
            except BaseException:
                os.close(fd)
                raise
            # The previous owner may have removed the file between our open and flock: then
            # we locked a file that no longer has the name, and must start over.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        previous = _read(fd)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd
        return LockOwner.parse(previous) if previous.strip() else None

    def release(self) -> None:
        """Removes the lock file and releases the lock (no-op when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if _same_file(fd, self.path):
                self.path.unlink()
        finally:
            os.close(fd)

    def __enter__(self) -> WorkDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode(errors="replace")


def _same_file(fd: int, path: Path) -> bool:
    try:
        named = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def remove_leftovers(directory: str | os.PathLike) -> list[Path]:
    """Removes the temporary checkpoint files that killed runs left in ``directory``.

    Call it only while holding the directory's :class:`WorkDirLock`.

    Returns:
        The files removed.
    """
    removed = remove_stale_temporaries(directory)
    directory = Path(directory)
    if directory.is_dir():
        for path in directory.iterdir():
            if _OLD_TEMPORARY.match(path.name) and path.is_file():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return removed


def iteration_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """The ``iter_<n>.pth`` files of ``directory``, newest (highest n) first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [
        (int(match.group(1)), path)
        for path in directory.iterdir()
        if (match := ITERATION_CHECKPOINT.match(path.name))
    ]
    return [path for _, path in sorted(found, reverse=True)]


@dataclass(frozen=True)
class ResumeChoice:
    """The checkpoint to resume from, and why the others were passed over."""

    path: str | None
    skipped: tuple[str, ...] = ()
    fell_back: bool = False


def checkpoint_to_resume(work_dir: str | os.PathLike) -> ResumeChoice:
    """The checkpoint that ``--resume`` (without a file) continues from.

    That is the file named in ``<work_dir>/last_checkpoint`` (mmengine's record of the latest
    save) when it can be read; else, when that record is missing, empty, or names a missing
    or unreadable file (a run killed while writing it, a moved work dir), the newest readable
    ``iter_<n>.pth`` of the work dir.

    Returns:
        The choice: ``path`` is None when there is nothing to resume; ``skipped`` holds one
        line per file passed over; ``fell_back`` tells that ``last_checkpoint`` was not used.
    """
    work_dir = Path(work_dir)
    skipped = []
    record = work_dir / "last_checkpoint"
    recorded = record.read_text().strip() if record.is_file() else ""
    if recorded:
        problem = _unreadable(recorded)
        if problem is None:
            return ResumeChoice(recorded)
        skipped.append(f"{record} names '{recorded}', which {problem}")
    elif record.is_file():
        skipped.append(f"{record} is empty")
    for path in iteration_checkpoints(work_dir):
        if os.path.abspath(path) == os.path.abspath(recorded):
            continue
        problem = _unreadable(str(path))
        if problem is None:
            return ResumeChoice(str(path), tuple(skipped), fell_back=True)
        skipped.append(f"'{path}' {problem}")
    return ResumeChoice(None, tuple(skipped), fell_back=bool(skipped))


def _unreadable(path: str) -> str | None:
    """Why ``path`` cannot be resumed from, or None when it reads as a checkpoint."""
    if not os.path.isfile(path):
        return "does not exist"
    try:
        read_checkpoint(path)
    except CheckpointError as error:
        return f"cannot be read: {error}"
    return None
