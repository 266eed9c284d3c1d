"""Writing files so that no reader, and no interrupted run, ever sees half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch


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
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
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
