"""The record ``.repvgg_seg-written`` of the files repvgg_seg tools wrote into a folder.

A file is a tool's while its inode, size and modification time are the recorded ones,
whatever its name; a user's file put under the same name is not. Claiming a folder, and
what a run may replace or remove there, is :mod:`repvgg_seg.output_dir`'s.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# The folder's record of the files repvgg_seg tools wrote into it: one JSON object a line,
# {"writer", "path" (relative), "ino", "size", "mtime"}. A file is the tool's while its
# inode, size and modification time are the recorded ones, whatever its name.
RECORD_NAME = ".repvgg_seg-written"


class WrittenRecord:
    """The files repvgg_seg tools wrote into ``folder`` (:data:`RECORD_NAME`)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / RECORD_NAME
        self._entries: dict[str, dict] = {}
        try:
            lines = self.path.read_text(errors="replace").splitlines()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            lines = []
        for line in lines:
            try:
                entry = json.loads(line)
                self._entries[str(entry["path"])] = entry
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash: that file is not known as ours

    def _key(self, path: Path) -> str:
        return os.path.relpath(os.path.abspath(path), os.path.abspath(self.folder))

    def writer_of(self, path: str | os.PathLike) -> str | None:
        """The tool that wrote ``path`` (as it is now), or None: not a file a tool wrote."""
        entry = self._entries.get(self._key(Path(path)))
        try:
            stat = os.lstat(path)
        except OSError:
            return None
        if entry is None or (entry.get("ino"), entry.get("size"), entry.get("mtime")) != (
            stat.st_ino,
            stat.st_size,
            stat.st_mtime_ns,
        ):
            return None
        return str(entry.get("writer", ""))

    def known_name(self, path: str | os.PathLike) -> bool:
        """Whether a tool once wrote a file named ``path`` (it may have changed since)."""
        return self._key(Path(path)) in self._entries

    def add(self, path: str | os.PathLike, writer: str, written: str | os.PathLike) -> None:
        """Records ``path`` as written by ``writer``; ``written`` is the file as it is now
        (``path`` itself, or the temporary file about to be renamed to it)."""
        stat = os.lstat(written)
        entry = {
            "writer": writer,
            "path": self._key(Path(path)),
            "ino": stat.st_ino,
            "size": stat.st_size,
            "mtime": stat.st_mtime_ns,
        }
        # Appended before the rename: a crash in between leaves an entry for an inode that
        # is only a (marked) temporary file, never a user's file taken for ours.
        with open(self.path, "a", encoding="utf-8") as record:
            record.write(json.dumps(entry) + "\n")
        self._entries[entry["path"]] = entry
