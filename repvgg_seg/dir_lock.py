"""The one-run lock of a tool's output folder (used by :mod:`repvgg_seg.output_dir` only).

:class:`WorkDirLock` is an advisory ``flock`` on a lock file inside the folder (a training's
work dir: ``.train.lock``; :class:`LockRole` names the others: infer's out dir, deploy's and
quantize's output folder), holding the owner's pid, host, start time and the marker its
temporary files carry. The kernel releases it when its process dies, however it dies, so a
killed run's lock is taken over by the next run, which learns who held it and removes what
carries its marker; processes forked from the owner (DataLoader workers) do not hold it.
Claiming a folder (the checks, the lock, the record of what a run wrote, what it may replace
or remove) is :mod:`repvgg_seg.output_dir`'s.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import re
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError

LOCK_NAME = ".train.lock"


class WorkDirBusyError(UsageError):
    """Another live run holds the lock of the folder (a training's work dir, an out dir)."""


@dataclass(frozen=True)
class LockRole:
    """What a :class:`WorkDirLock` guards, for its file name and its refusal.

    Attributes:
        file_name: The lock file inside the directory.
        subject: How the refusal names the directory (``Work dir``, ``--out-dir``).
        holder: Who else uses it (``another training``).
        option: The option that picks another directory.
        tag: Names the tool in the folder's record of written files (default: the lock
            file's name, ``.train.lock`` -> ``train``).
    """

    file_name: str
    subject: str
    holder: str
    option: str
    tag: str = ""

    @property
    def writer(self) -> str:
        return self.tag or self.file_name.strip(".").removesuffix(".lock")


TRAINING = LockRole(LOCK_NAME, "Work dir", "another training", "--work-dir")


@dataclass(frozen=True)
class LockOwner:
    """Who holds (or held) a work-dir lock, as written in the lock file."""

    pid: int | None
    host: str
    started: str
    marker: str = ""

    def __str__(self) -> str:
        pid = "unknown" if self.pid is None else self.pid
        return f"pid {pid} on host {self.host or 'unknown'}, started {self.started or 'unknown'}"

    @classmethod
    def parse(cls, text: str) -> LockOwner:
        try:
            fields = json.loads(text)
        except ValueError:
            fields = {}
        if not isinstance(fields, dict):
            fields = {}
        pid = fields.get("pid")
        marker = fields.get("marker")
        return cls(
            pid if isinstance(pid, int) else None,
            str(fields.get("host", "")),
            str(fields.get("started", "")),
            # Only a marker of the form this module writes: it selects files to delete.
            marker if isinstance(marker, str) and re.fullmatch(r"[0-9a-f]{8}", marker) else "",
        )


class WorkDirLock:
    """An exclusive, advisory lock on a work dir, held by one process (``flock``).

    Args:
        work_dir: The directory to lock (created if missing).
        role: What the lock guards (a training's work dir by default).

    Attributes:
        marker: 8 random hex digits recorded with the owner: the temporary files and
            staging folders this run makes carry it, so that the run that takes over a dead
            owner's lock removes those and nothing else.
    """

    # The locks this process holds, by the real path of their work dir.
    _held: dict[str, WorkDirLock] = {}

    def __init__(self, work_dir: str | os.PathLike, role: LockRole = TRAINING) -> None:
        self.work_dir = Path(work_dir)
        self.role = role
        self.path = self.work_dir / role.file_name
        self.marker = secrets.token_hex(4)
        self._fd: int | None = None

    @classmethod
    def _forget_in_forked_child(cls) -> None:
        # A forked child (a DataLoader worker) shares the lock's open file; closing its copy
        # leaves the lock with the parent alone, so that it ends with the parent (kill -9
        # included) instead of with the last orphaned worker, seconds later.
        for lock in cls._held.values():
            if lock._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(lock._fd)
                lock._fd = None
        cls._held.clear()

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
                role = self.role
                raise WorkDirBusyError(
                    f"{role.subject} '{self.work_dir}' is in use by {role.holder} ({owner}; "
                    f"lock file {self.path}).{_dead_owner_note(owner)} Wait for that run to "
                    f"end or stop it, or pass another {role.option}."
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
            "marker": self.marker,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd
        WorkDirLock._held[os.path.realpath(self.work_dir)] = self
        return LockOwner.parse(previous) if previous.strip() else None

    def release(self) -> None:
        """Removes the lock file and releases the lock (no-op when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        WorkDirLock._held.pop(os.path.realpath(self.work_dir), None)
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


os.register_at_fork(after_in_child=WorkDirLock._forget_in_forked_child)


def _dead_owner_note(owner: LockOwner) -> str:
    """For a lock whose recorded owner is gone: who still holds it."""
    if owner.pid is None or owner.host != socket.gethostname():
        return ""
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return (
            f" Process {owner.pid} is no longer running: a process it started still holds the "
            "lock (an orphaned DataLoader worker ends within about 10 s); run again shortly."
        )
    except PermissionError:
        pass  # alive, another user's
    return ""


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode(errors="replace")


def _same_file(fd: int, path: Path) -> bool:
    try:
        named = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)
