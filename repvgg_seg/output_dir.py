"""Claiming a tool's output folder, and the one rule for what a run may replace or remove.

The rule (docs/guarantees.md, "Outputs"): a tool replaces or removes only files it wrote; a
file of the user's in the way is refused, naming it, before any work (infer's
``--overwrite`` is the one explicit exception); an output that is one of the run's inputs is
refused; leftovers of a killed run are recognised by a marker the tool wrote, not by their
name; what a run removes it says in one line.

- :func:`check_out_dir`: can the folder be written at all (before any work).
- :class:`OutputDir`: one run's claim of the folder, used by every tool that writes into a
  folder (training's work dir, infer's ``--out-dir``, test's ``--out``/``--show-dir``,
  deploy's and quantize's output folder): the lock (:class:`~repvgg_seg.dir_lock.WorkDirLock`,
  whose owner record holds the run's marker), the folder's :class:`WrittenRecord`, and the
  :class:`~repvgg_seg.atomic_io.WriteGuard` that every write of
  :func:`~repvgg_seg.atomic_io.write_atomically` into the folder consults.
- :func:`refuse_input_as_output`: an output path that is, holds or lies in one of the inputs.
- :func:`claim_result_folders`: folders a third party fills (mmseg's ``--out`` and
  ``--show-dir`` of tools/test.py): refused when they hold the inputs or files no tool
  wrote, recorded as the tool's afterwards.
- :func:`check_file_output`: a one-file output (plot_logs' PNG, convert's DST).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from .atomic_io import guard_folder, remove_files, remove_marked
from .dir_lock import LockOwner, LockRole, WorkDirLock
from .errors import UsageError
from .written_record import RECORD_NAME, WrittenRecord

__all__ = [
    "RECORD_NAME",
    "NotWrittenByToolError",
    "OutputDir",
    "WrittenRecord",
    "and_more",
    "check_file_output",
    "check_out_dir",
    "claim_result_folders",
    "describe_removed",
    "files_under",
    "held_claim",
    "refuse_input_as_output",
]

# The claims this process holds, by the real path of their folder.
_HELD: dict[str, OutputDir] = {}


def held_claim(folder: str | os.PathLike) -> OutputDir | None:
    """The :class:`OutputDir` this process holds on ``folder``, or None."""
    return _HELD.get(os.path.realpath(folder))


class NotWrittenByToolError(UsageError):
    """A file the tool would replace or remove was not written by it (a user's file)."""


def check_out_dir(
    path: str | os.PathLike, subject: str, file_names: Iterable[str] = (), tool: str = ""
) -> None:
    """Refuses a folder a tool cannot write its results into; creates nothing.

    A missing folder (the tool creates it) needs a nearest existing parent that is a folder
    that can be written. ``subject`` names it in messages (``--out``); ``file_names`` are the
    files ``tool`` writes directly into it.

    Raises:
        UsageError: The path, or a parent of it, is a file; the nearest existing folder is
            not writable; a folder has the name of one of ``file_names``.
    """
    path = Path(path)
    for folder in (path, *path.absolute().parents):
        if not folder.exists():
            continue
        if not folder.is_dir():
            raise UsageError(
                f"{subject} {str(path)!r}: {str(folder)!r} is a file, not a folder; pass a "
                "folder (it is created if missing)."
            )
        # Checked again, for real, when the run creates the folder and takes its lock.
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(
                f"Cannot write into {subject} {str(path)!r} ({str(folder)!r} is not "
                "writable); pass a folder you can write to."
            )
        break
    for name in file_names:
        if (path / name).is_dir():
            raise UsageError(
                f"{str(path / name)!r} is a folder, but {tool} writes a file of that name; "
                "move the folder away or pass another output folder."
            )


def refuse_input_as_output(
    output: str | os.PathLike, inputs: Iterable[str | os.PathLike], option: str
) -> None:
    """Refuses an output (file or folder) that is one of the inputs, lies inside an input
    folder, or holds an input.

    Raises:
        UsageError: Naming the output, the input and ``option``.
    """
    out = Path(os.path.realpath(output))
    for raw in inputs:
        source = Path(os.path.realpath(raw))
        linked = out.exists() and source.exists() and os.path.samefile(out, source)
        if linked or out == source or source in out.parents or out in source.parents:
            raise UsageError(
                f"{option} {os.fspath(output)!r} would write into the run's input "
                f"{os.fspath(raw)!r}: outputs never replace inputs. Pass another {option}."
            )


def check_file_output(path: str | os.PathLike, option: str, overwrite: bool) -> None:
    """Refuses a one-file output (no folder to claim) that is a folder, or that exists and
    ``overwrite`` (``--overwrite``) was not given, with a :class:`UsageError`."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {str(path)!r} is a folder; pass a file name.")
    if os.path.lexists(path) and not overwrite:
        raise UsageError(
            f"{option} {str(path)!r} exists; pass --overwrite to replace it, or another "
            f"{option}."
        )
    check_out_dir(path.parent if str(path.parent) else ".", f"The folder of {option}")


def and_more(paths: list) -> str:
    """What follows the first of ``paths`` named in a refusal: `` (and N more)`` or nothing."""
    return f" (and {len(paths) - 1} more)" if len(paths) > 1 else ""


def describe_removed(paths: Iterable[Path], why: str) -> str:
    """The one line that says what a run removed."""
    paths = list(paths)
    return f"removed {len(paths)} {why}: {', '.join(str(path) for path in paths)}"


class OutputDir:
    """One run's claim of an output folder: lock, record, guard; a context manager.

    While held, every :func:`~repvgg_seg.atomic_io.write_atomically` into the folder (at any
    depth) is recorded, and refused where it would replace a file the tool did not write
    (unless ``overwrite``).

    Args:
        path: The folder (created if missing).
        role: Its lock file and how messages name it; ``role.writer`` names the tool in the
            record.
        overwrite: Files the tool did not write may be replaced (infer's ``--overwrite``).
    """

    def __init__(self, path: str | os.PathLike, role: LockRole, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.role = role
        self.overwrite = overwrite
        self.lock = WorkDirLock(self.path, role)
        self.marker = self.lock.marker
        self.record = WrittenRecord(self.path)
        self.stale_owner: LockOwner | None = None
        self.removed_leftovers: list[Path] = []

    def acquire(self) -> list[Path]:
        """Locks the folder, removes what a killed run marked as its leftovers, guards writes.

        Returns:
            The leftovers removed (temporary files and staging folders of the dead run
            whose lock this run took over).

        Raises:
            WorkDirBusyError: Another live run holds the folder.
            OSError: The folder cannot be created or locked (no ``flock``: see callers).
        """
        self.stale_owner = self.lock.acquire()
        try:
            self.record = WrittenRecord(self.path)
            guard_folder(self.path, self)
            _HELD[os.path.realpath(self.path)] = self
            if self.stale_owner is not None and self.stale_owner.marker:
                self.removed_leftovers = remove_marked(self.path, self.stale_owner.marker)
        except BaseException:
            self.release()  # a claim that failed half-way holds nothing
            raise
        return self.removed_leftovers

    def release(self) -> None:
        if _HELD.get(os.path.realpath(self.path)) is self:
            del _HELD[os.path.realpath(self.path)]
            guard_folder(self.path, None)
        self.lock.release()

    def __enter__(self) -> OutputDir:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def is_ours(self, path: str | os.PathLike, writers: Iterable[str] | None = None) -> bool:
        """Whether a tool (one of ``writers``, if given) wrote ``path`` as it is now."""
        writer = self.record.writer_of(path)
        return writer is not None and (writers is None or writer in set(writers))

    def refuse_foreign(self, paths: Iterable[str | os.PathLike], action: str = "replace") -> None:
        """Raises :class:`NotWrittenByToolError` naming the first of ``paths`` that exists and
        that no tool wrote (nothing when ``overwrite``)."""
        foreign = [Path(p) for p in paths if os.path.lexists(p) and not self.is_ours(p)]
        foreign = [] if self.overwrite else foreign
        if foreign:
            raise NotWrittenByToolError(
                f"{str(foreign[0])!r}{and_more(foreign)} was not written by a repvgg_seg tool "
                f"(it is not in {str(self.record.path)!r}), and this run would {action} it. "
                f"Move it out of {self.role.subject.lower()} {str(self.path)!r}, or pass "
                f"another {self.role.option}."
            )

    def record_written(self, paths: Iterable[str | os.PathLike]) -> None:
        """Records files this run wrote without :func:`write_atomically` (a config dump)."""
        for path in paths:
            if os.path.isfile(path):
                self.record.add(path, self.role.writer, path)

    def remove(self, paths: Iterable[str | os.PathLike]) -> list[Path]:
        """Removes those of ``paths`` that a tool wrote; refuses (removing nothing) when one
        was not.

        Returns:
            The files removed.
        """
        paths = [Path(p) for p in paths if os.path.lexists(p)]
        self.refuse_foreign(paths, "delete")
        return remove_files(paths)

    def _staged(self, path: Path) -> bool:
        # In this run's own staging or scratch folder: new files, published (and recorded)
        # later or never; a refused run leaves no record behind.
        inner = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(self.path))).parent
        return any(f".{self.marker}." in part for part in inner.parts)

    def admit(self, path: Path) -> None:
        if not self._staged(path):
            self.refuse_foreign([path])

    def wrote(self, path: Path, temporary: Path) -> None:
        if not self._staged(path):
            self.record.add(path, self.role.writer, temporary)


def files_under(folder: str | os.PathLike, skip: Iterable[str] = ()) -> list[Path]:
    """Every file under ``folder`` (links not followed) but the record and ``skip`` names."""
    skipped = {RECORD_NAME, *skip}
    return sorted(
        Path(top) / name
        for top, _, names in os.walk(folder)
        for name in names
        if name not in skipped
    )


@contextlib.contextmanager
def claim_result_folders(
    folders: Mapping[str, str | os.PathLike | None], inputs: Iterable[str | os.PathLike], tool: str
) -> Iterator[None]:
    """Holds the folders a third party writes a run's results into (mmseg's evaluator and
    visualizer), which :func:`~repvgg_seg.atomic_io.write_atomically` never sees.

    Before the run, each folder is refused when it is, holds or lies in one of ``inputs``
    (the dataset), or when it holds a file no tool wrote; after it (however it ends), every
    file in it is recorded as the tool's, so that the next run may replace them.

    ``folders`` maps an option (``--out``) to its folder (None: not asked for); ``inputs``
    are the run's input folders and files.

    Raises:
        UsageError: A folder is unusable, is an input or holds a file no tool wrote.
        WorkDirBusyError: Another live run of ``tool`` writes into a folder.
    """
    inputs = list(inputs)
    claims: dict[str, OutputDir] = {}
    checked: list[OutputDir] = []  # whose files, checked, are then the run's results
    try:
        for option, folder in folders.items():
            if folder is None or os.path.realpath(folder) in claims:
                continue
            check_out_dir(folder, option)
            refuse_input_as_output(folder, inputs, option)
            role = LockRole(".results.lock", option, f"another {tool} run", option)
            claim = OutputDir(folder, role)
            claims[os.path.realpath(folder)] = claim
            claim.acquire()
            claim.refuse_foreign(files_under(folder, [role.file_name]), "write over")
            checked.append(claim)
        yield
    finally:
        for claim in checked:
            claim.record_written(files_under(claim.path, [claim.role.file_name]))
        for claim in claims.values():
            claim.release()
