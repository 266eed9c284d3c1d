"""A training's work directory: one run at a time, no leftovers, a checkpoint to resume.

- :class:`~repvgg_seg.dir_lock.WorkDirLock`: an exclusive lock (``<work_dir>/.train.lock``)
  so that two trainings never write into the same work dir (:mod:`repvgg_seg.dir_lock`).
- :func:`plan_training_start`: how a run begins in a work dir that may hold an earlier run's
  checkpoints (resume one, refuse, or start over explicitly), decided before anything in the
  work dir changes.
- :func:`remove_leftovers`: the temporary files of checkpoints whose writing was killed (the
  claim removes those carrying a dead run's marker, :mod:`repvgg_seg.output_dir`).
- :func:`checkpoint_to_resume`: ``last_checkpoint`` when it names a readable file, else the
  newest readable ``iter_<n>.pth``; a complete checkpoint that cannot be resumed is an error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .atomic_io import remove_files
from .checkpoint import CheckpointError, UnsafeCheckpointError, read_checkpoint
from .dir_lock import LOCK_NAME, LockOwner, LockRole, WorkDirBusyError, WorkDirLock
from .errors import UsageError
from .output_dir import NotWrittenByToolError, WrittenRecord, and_more, held_claim

__all__ = [
    "LOCK_NAME",
    "EarlierRunError",
    "LockOwner",
    "NotWrittenByToolError",
    "LockRole",
    "ResumeChoice",
    "TrainingStart",
    "WorkDirBusyError",
    "WorkDirLock",
    "checkpoint_to_resume",
    "earlier_run_files",
    "iteration_checkpoints",
    "plan_training_start",
    "remove_leftovers",
    "written_only_by",
]

# The name mmengine's CheckpointHook gives iteration checkpoints (filename_tmpl 'iter_{}.pth').
ITERATION_CHECKPOINT = re.compile(r"^iter_(\d+)\.pth$")
# What a run leaves that a later run in the same work dir would replace or mix with its own:
# CheckpointHook's iteration, epoch and best checkpoints, and its record of the latest one.
RUN_CHECKPOINT = re.compile(r"^(iter_\d+|epoch_\d+|best_.+)\.pth$")
LAST_CHECKPOINT = "last_checkpoint"
# The flag of tools/train.py that starts over (named in messages).
START_OVER_FLAG = "--overwrite-work-dir"


class EarlierRunError(UsageError):
    """The work dir holds an earlier run's checkpoints, and neither resuming it nor starting
    over was asked for."""


def remove_leftovers(directory: str | os.PathLike) -> list[Path]:
    """The temporary files and staging folders of a killed run that this process's claim of
    ``directory`` removed when it took over the dead run's lock (each reported once).

    They are recognised by the marker the dead run recorded in its lock, never by their
    name (:func:`repvgg_seg.output_dir.remove_marked`).
    """
    claim = held_claim(directory)
    if claim is None:
        return []
    removed, claim.removed_leftovers = claim.removed_leftovers, []
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
    or incomplete file (a run killed while writing it, a moved work dir), the newest readable
    ``iter_<n>.pth`` of the work dir.

    Returns:
        The choice: ``path`` is None when the work dir holds no checkpoint; ``skipped`` holds
        one line per file passed over; ``fell_back`` tells that ``last_checkpoint`` was not
        used.

    Raises:
        CheckpointError: A complete checkpoint met on the way is refused by the reader (it
            holds Python objects outside the allow-list): resuming an older one, or none,
            would write over it. Or checkpoints exist but none of them can be read.
    """
    work_dir = Path(work_dir)
    skipped, unreadable = [], []
    record = work_dir / LAST_CHECKPOINT
    recorded = record.read_text().strip() if record.is_file() else ""
    if recorded:
        problem = _unreadable(recorded)
        if problem is None:
            return ResumeChoice(recorded)
        skipped.append(f"{record} names '{recorded}', which {problem}")
        unreadable += [recorded] if os.path.isfile(recorded) else []
    elif record.is_file():
        skipped.append(f"{record} is empty")
    for path in iteration_checkpoints(work_dir):
        if os.path.abspath(path) == os.path.abspath(recorded):
            continue
        problem = _unreadable(str(path))
        if problem is None:
            return ResumeChoice(str(path), tuple(skipped), fell_back=True)
        skipped.append(f"'{path}' {problem}")
        unreadable.append(str(path))
    if unreadable:
        raise CheckpointError(
            f"--resume: no checkpoint of work dir '{work_dir}' can be read: "
            f"{'; '.join(skipped)}. Pass --resume with a readable checkpoint file, delete the "
            f"broken ones, or start over with {START_OVER_FLAG}."
        )
    return ResumeChoice(None, tuple(skipped), fell_back=bool(skipped))


def _unreadable(path: str) -> str | None:
    """Why ``path`` cannot be resumed from, or None when it reads as a checkpoint.

    Raises:
        CheckpointError: ``path`` is complete but refused by the reader (see
            :func:`checkpoint_to_resume`).
    """
    if not os.path.isfile(path):
        return "does not exist"
    try:
        read_checkpoint(path)
    except UnsafeCheckpointError as error:
        raise CheckpointError(
            f"--resume: {error} It is not passed over: resuming an older checkpoint, or "
            f"starting from scratch, would write over it. Move it out of the work dir, or "
            "pass --resume with another checkpoint file, or another --work-dir."
        ) from error
    except CheckpointError as error:
        return f"cannot be read: {error}"
    return None


@dataclass(frozen=True)
class TrainingStart:
    """How a training begins in its work dir (see :func:`plan_training_start`).

    Attributes:
        resume: Continue a run (mmengine's ``resume``).
        removed: The earlier run's files removed to start over.
    """

    resume: bool
    removed: tuple[Path, ...] = ()


def earlier_run_files(work_dir: str | os.PathLike) -> list[Path]:
    """The files named like an earlier training's checkpoints (and ``last_checkpoint``) in
    ``work_dir``, whoever wrote them."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return []
    return sorted(
        path
        for path in work_dir.iterdir()
        if (RUN_CHECKPOINT.match(path.name) or path.name == LAST_CHECKPOINT) and path.is_file()
    )


def written_only_by(work_dir: str | os.PathLike, writer: str) -> bool:
    """Whether every earlier-run file of ``work_dir`` was written by ``writer`` (a tool's
    tag in the folder's record, e.g. ``demo``)."""
    record = WrittenRecord(work_dir)
    return all(
        _trainings(path, record)
        if path.name == LAST_CHECKPOINT
        else record.writer_of(path) == writer
        for path in earlier_run_files(work_dir)
    )


def _trainings(path: Path, record: WrittenRecord) -> bool:
    """Whether a training wrote ``path``: it is in the work dir's record, or it is mmengine's
    ``last_checkpoint`` (written in place, never recorded) naming a recorded checkpoint."""
    if record.writer_of(path) is not None:
        return True
    if path.name != LAST_CHECKPOINT or not path.is_file():
        return False
    with open(path, "rb") as pointer:
        named = pointer.read(4096).decode(errors="replace").strip()
    # Empty: emptied by a crash while mmengine rewrote it in place.
    return not named or record.known_name(path.parent / os.path.basename(named))


def plan_training_start(
    work_dir: str | os.PathLike,
    resume: bool,
    resume_from: str | None,
    start_over: bool,
    outputs: Iterable[str] = (),
    record: WrittenRecord | None = None,
) -> TrainingStart:
    """Decides how a training begins in ``work_dir``; call it while holding its claim.

    Nothing in the work dir changes unless ``start_over`` is set and the work dir holds an
    earlier run's checkpoints (they are then removed, so that the runs never mix). Only
    files a tool wrote (the folder's :class:`~repvgg_seg.output_dir.WrittenRecord`) count as
    an earlier run's; a file of the user's that this run would replace or delete is refused.

    Args:
        work_dir: The training's work dir.
        resume: ``--resume`` was given.
        resume_from: Its checkpoint file, or None for the work dir's latest.
        start_over: Remove an earlier run's checkpoints and train from the start.
        outputs: Names of other files the run writes into the work dir (mmengine's config
            dump ``<config name>.py``, the demo's ``curves.png``).

    Raises:
        NotWrittenByToolError: A file this run would replace or delete (an output's name,
            or, without ``resume``, a checkpoint's) was not written by a tool.
        EarlierRunError: The work dir holds checkpoints, and neither ``resume`` nor
            ``start_over`` is set; or ``resume_from`` is not one of the work dir's files
            while the work dir holds a training's checkpoints (the runs would mix).
        CheckpointError: ``resume_from`` cannot be read; or ``resume`` without a file, and
            the work dir's checkpoints cannot be resumed (:func:`checkpoint_to_resume`).
    """
    if resume and start_over:
        raise UsageError(f"--resume and {START_OVER_FLAG} exclude each other; pass one.")
    work_dir = Path(work_dir)
    record = record if record is not None else WrittenRecord(work_dir)
    candidates = earlier_run_files(work_dir)
    in_the_way = [work_dir / name for name in outputs] + ([] if resume else candidates)
    foreign = [p for p in in_the_way if os.path.lexists(p) and not _trainings(p, record)]
    if foreign:
        raise NotWrittenByToolError(
            f"Work dir '{work_dir}' holds {foreign[0].name}{and_more(foreign)}, which no "
            f"training wrote (it is not in {record.path.name}); this run would replace or "
            "delete it. Move it out of the work dir, or pass another --work-dir."
        )
    runs = [path for path in candidates if _trainings(path, record)]
    if resume and runs and resume_from is not None:
        _refuse_resuming_elsewhere(work_dir, resume_from, runs)
    if resume:
        for path in candidates:
            if record.writer_of(path) is None and record.known_name(path):
                # A checkpoint a training wrote under this name, changed since (cut short by
                # a copy, say): the resumed run may write it again.
                record.add(path, "train", path)
        if resume_from is None:
            checkpoint_to_resume(work_dir)  # raises when the work dir cannot be resumed
        elif "://" not in resume_from:
            read_checkpoint(resume_from)  # its error names the file, before the run starts
        return TrainingStart(resume=True)
    if candidates and not start_over:
        raise EarlierRunError(
            f"{_earlier_run(work_dir, candidates)}; this run would write over them and mix the "
            f"two. Pass --resume to continue that run, another --work-dir for a new one, or "
            f"{START_OVER_FLAG} to delete them and start over."
        )
    return TrainingStart(resume=False, removed=tuple(remove_files(candidates)))


def _earlier_run(work_dir: Path, candidates: list[Path]) -> str:
    newest = iteration_checkpoints(work_dir)
    shown = (newest[0] if newest else candidates[0]).name
    count = len(candidates)
    return (
        f"Work dir '{work_dir}' holds checkpoints of an earlier run ({count} files, e.g. {shown})"
    )


def _refuse_resuming_elsewhere(work_dir: Path, resume_from: str, candidates: list[Path]) -> None:
    """Refuses ``--resume FILE`` of another folder (or a URL) into a work dir that holds a
    run's checkpoints: the resumed run's checkpoints would mix with that run's."""
    folder = os.path.dirname(os.path.abspath(resume_from))
    if "://" not in resume_from and os.path.realpath(folder) == os.path.realpath(work_dir):
        return
    raise EarlierRunError(
        f"{_earlier_run(work_dir, candidates)}, and --resume {resume_from} continues a run of "
        "another folder: the two would mix. Pass --resume without a file to continue the work "
        "dir's run, or a new --work-dir to continue that checkpoint's run there."
    )
