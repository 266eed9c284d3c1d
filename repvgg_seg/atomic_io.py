"""Writing files so that no reader, and no interrupted run, ever sees half of one."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

TEMPORARY_SUFFIX = ".part"
# write_atomically's temporary names: ".<final name>.<mkstemp's 8 random [a-z0-9_]>.part".
_TEMPORARY_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}" + re.escape(TEMPORARY_SUFFIX) + "$")


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
    still open); raising there keeps the file from ever appearing under ``path``.

    Returns:
        The path written (``~`` expanded).
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX
    )
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
            if check is not None:
                check(Path(partial))
        os.chmod(partial, 0o644)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    return path


def save_atomically(obj: Any, path: str | Path) -> Path:
    """``torch.save`` by :func:`write_atomically`."""
    return write_atomically(path, lambda file: torch.save(obj, file))


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Removes the temporary files that killed :func:`write_atomically` calls left behind.

    Only call it on a directory that no other process is writing to (a training's locked
    work dir, for instance): a temporary file being written right now looks the same.

    Returns:
        The files removed (none when ``directory`` does not exist).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in directory.iterdir():
        if _TEMPORARY_NAME.match(path.name) and path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed
