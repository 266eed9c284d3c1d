"""Writing files so that no reader, and no interrupted run, ever sees half of one.

A folder a tool has claimed (:mod:`repvgg_seg.output_dir`) registers a :class:`WriteGuard`
here: every write into it (at any depth) first asks the guard whether the file may be
replaced, names its temporary file with the guard's marker (so that the next run recognises
a killed run's temporaries by that marker, not by their name), and tells the guard which
file it wrote.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import torch

TEMPORARY_SUFFIX = ".part"
# write_atomically's temporary names: ".<final name>.<mkstemp's 8 random [a-z0-9_]>.part",
# in a guarded folder ".<final name>.<marker>.<8 random>.part" (marked_temporary).


class WriteGuard(Protocol):
    """What a claimed folder decides about the files written into it."""

    marker: str

    def admit(self, path: Path) -> None:
        """Raises when ``path`` must not be replaced (a file the tool did not write)."""

    def wrote(self, path: Path, temporary: Path) -> None:
        """``temporary`` (complete, fsynced) is about to be renamed to ``path``."""


# The guards of the folders this process has claimed, by real path.
_GUARDS: dict[str, WriteGuard] = {}


def guard_folder(folder: str | os.PathLike, guard: WriteGuard | None) -> None:
    """Registers ``guard`` for the writes into ``folder`` and below (None: removes it)."""
    key = os.path.realpath(folder)
    if guard is None:
        _GUARDS.pop(key, None)
    else:
        _GUARDS[key] = guard


def guard_of(path: str | os.PathLike) -> WriteGuard | None:
    """The guard of the nearest claimed folder that holds ``path``, or None."""
    if not _GUARDS:
        return None
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    while True:
        guard = _GUARDS.get(folder)
        if guard is not None:
            return guard
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def temporary_prefix(path: Path, marker: str = "") -> str:
    """The start of the name of a temporary file (or folder) beside ``path``."""
    return f".{path.name}.{marker}." if marker else f".{path.name}."


def write_atomically(
    path: str | Path,
    write: Callable[[BinaryIO], None],
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Calls ``write(file)`` on a temporary file beside ``path``, then renames it into place.

    The file is flushed and fsynced before the rename and made readable like any other file
    (``mkstemp`` creates owner-only ones). Any failure, Ctrl-C included, removes the
    temporary file and leaves whatever ``path`` held before untouched. ``check``, if given,
    is called with the temporary file's path after it is written (and while ``file`` is
    still open); raising there keeps the file from ever appearing under ``path``. In a
    claimed folder, its guard is asked first (it may refuse to replace ``path``).

    Returns:
        The path written (``~`` expanded).
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    guard = guard_of(path)
    if guard is not None:
        guard.admit(path)
    fd, partial = tempfile.mkstemp(
        dir=path.parent,
        prefix=temporary_prefix(path, guard.marker if guard else ""),
        suffix=TEMPORARY_SUFFIX,
    )
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
            if check is not None:
                check(Path(partial))
        os.chmod(partial, 0o644)
        if guard is not None:
            guard.wrote(path, Path(partial))
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    return path


def save_atomically(obj: Any, path: str | Path) -> Path:
    """``torch.save`` by :func:`write_atomically`."""
    return write_atomically(path, lambda file: torch.save(obj, file))


def marked_temporary(name: str, marker: str) -> bool:
    """Whether ``name`` is a temporary file name written under ``marker``."""
    return (
        bool(marker)
        and name.startswith(".")
        and name.endswith(TEMPORARY_SUFFIX)
        and re.fullmatch(
            r"\..+\." + re.escape(marker) + r"\.[a-z0-9_]{8}" + re.escape(TEMPORARY_SUFFIX), name
        )
        is not None
    )


# mkdtemp's folders of a run: ".<name>.<marker>.<8 random>.staging|scratch".
_MARKED_FOLDER = r"\..+\.{marker}\.[a-z0-9_]{{8}}\.(staging|scratch)"


def remove_marked(folder: str | os.PathLike, marker: str) -> list[Path]:
    """Removes the temporary files and staging/scratch folders carrying ``marker`` under
    ``folder`` (symbolic links are not followed)."""
    removed = []
    staging = re.compile(_MARKED_FOLDER.format(marker=re.escape(marker)))
    for top, folders, files in os.walk(folder):
        for name in [name for name in folders if staging.fullmatch(name)]:
            folders.remove(name)
            path = Path(top) / name
            if not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        marked = [Path(top) / name for name in files if marked_temporary(name, marker)]
        removed += remove_files(path for path in marked if not path.is_symlink())
    return removed


def remove_files(paths: Iterable[Path]) -> list[Path]:
    """Removes each of ``paths``; returns those that were there to remove."""
    removed = []
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed
