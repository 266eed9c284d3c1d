"""Where a deploy writes: one run per output folder, and a consistent set of files in it.

A deploy stages its files in a hidden folder inside the output folder and renames them into
place only when every check passed. :class:`OutputFolder` makes that safe, through the
folder's claim (:class:`repvgg_seg.output_dir.OutputDir`, the one owner of output folders):

- it refuses, before any work, an output path that is a file, a folder it cannot write, a
  folder where a file it will write should go (:func:`repvgg_seg.output_dir.check_out_dir`),
  and a file of its names that no tool wrote (a user's ``<stem>_int8.json``);
- it holds the folder's lock (``.<kind>.lock``) while the run lasts. The kernel releases it
  when the process dies, so a second live run of the tool into the folder is refused, and
  the staging folder of a killed run (its name carries the marker recorded in that run's
  lock) is removed at the start of the next run; a hidden folder without that marker is
  never touched;
- :meth:`OutputFolder.publish` puts the staged files in place, records them as the tool's,
  and removes the files of an earlier deploy of the same config that this run does not
  write (an old ``.onnx`` beside a new ``.pth``), stale files first and the config last;
  :attr:`OutputFolder.removed_earlier` lists them for the tool's one line. Each file carries
  the run's ``deploy_id`` (checkpoint meta, config, ONNX metadata); a set mixed by a run
  killed while renaming is refused by :mod:`repvgg_seg.loader` and replaced by the next
  deploy.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from ..atomic_io import temporary_prefix
from ..checkpoint import CheckpointError, meta_of, read_checkpoint
from ..dir_lock import LockRole
from ..output_dir import OutputDir, check_out_dir

logger = logging.getLogger(__name__)

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
        self.removed_earlier: list[Path] = []
        role = LockRole(f".{kind}.lock", "Output folder", f"another {tool} run", "output folder")
        self.claim = OutputDir(self.path, role)
        self.lock = self.claim.lock

    def check(self) -> None:
        """Refuses a path the tool cannot write its files into (nothing is created).

        Raises:
            UsageError: The path (or a parent) is a file; a folder has the name of a file
                the tool writes; the folder (or the nearest existing parent) is not writable.
            NotWrittenByToolError: A file of the tool's names exists that no tool wrote.
        """
        names = deployed_names(self.stem, self.kind, self.suffixes)
        check_out_dir(self.path, "Output folder", names, self.tool)
        earlier = self._earlier_release()
        self.claim.refuse_foreign([self.path / name for name in names if name not in earlier])

    def __enter__(self) -> OutputFolder:
        """Checks and locks the folder, removes dead runs' staging folders, makes this one's.

        Raises:
            WorkDirBusyError: Another live run of the tool writes into the folder.
        """
        self.check()
        self.removed_leftovers = self.claim.acquire()
        try:
            self.check()  # again under the lock: the files may have changed meanwhile
            if adopted := self._earlier_release():
                self.claim.record_written(self.path / name for name in adopted)
                logger.warning(
                    f"Output folder '{self.path}' has no record of the files tools wrote (an "
                    f"earlier release's): {', '.join(adopted)}, one {self.tool} run's set, "
                    "adopted as the tool's."
                )
            name = Path(f"{self.stem}_{self.kind}")
            self.staging = Path(
                tempfile.mkdtemp(
                    dir=self.path,
                    prefix=temporary_prefix(name, self.claim.marker),
                    suffix=".staging",
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
        self.claim.release()

    def _earlier_release(self) -> list[str]:
        """The tool's files in a folder without a record (written before the record
        existed) when they are one run's set: a deploy's files all carry one ``deploy_id``
        (checkpoint meta, config, ONNX metadata); a quantization's JSON report names its
        ONNX model. Else none (they are then refused as files no tool wrote)."""
        names = deployed_names(self.stem, self.kind, self.suffixes)
        present = {name: self.path / name for name in names if (self.path / name).is_file()}
        if self.claim.record.path.exists() or not present:
            return []
        if self.kind != "deploy" and not any(name.endswith(".json") for name in present):
            return []  # a quantization's set is tied together by its report
        try:
            ids = {_run_id(path, self.kind == "deploy") for path in present.values()}
        except (CheckpointError, OSError, ValueError, DecodeError):
            return []  # not readable as the tool's files: a user's
        return sorted(present) if len(ids) == 1 and None not in ids else []

    def publish(self, staged: Iterable[Path]) -> list[Path]:
        """Moves the staged files into the folder as this deploy's complete set.

        Files of an earlier deploy of the same config that are not among ``staged`` are
        removed first (only files a tool wrote; :attr:`removed_earlier` lists them), then the
        staged files are recorded as the tool's and renamed in :data:`DEPLOY_SUFFIXES` order.

        Returns:
            The published paths.

        Raises:
            NotWrittenByToolError: A file of the tool's names appeared meanwhile that no
                tool wrote (nothing is published).
        """
        staged = sorted(staged, key=lambda path: self.suffixes.index(path.suffix))
        names = {path.name for path in staged}
        every = [self.path / name for name in deployed_names(self.stem, self.kind, self.suffixes)]
        self.claim.refuse_foreign(every)
        self.removed_earlier = self.claim.remove(p for p in every if p.name not in names)
        published = []
        for path in staged:
            self.claim.wrote(self.path / path.name, path)
            os.replace(path, self.path / path.name)
            published.append(self.path / path.name)
        folder = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(folder)  # the renames reach the disk together with the files
        finally:
            os.close(folder)
        return published


def _run_id(path: Path, deploy: bool) -> str | None:
    """What ties a file to the run that wrote it: a deploy's ``deploy_id``, or for a
    quantization's ``.onnx`` its own name and for its JSON report the ONNX name it records."""
    if path.suffix == ".pth":
        return meta_of(read_checkpoint(path)).get("deploy_id")
    if path.suffix == ".py":
        found = re.search(r"^deploy_id = '([^'\n]+)'$", path.read_text(), re.MULTILINE)
        return found and found.group(1)
    if path.suffix == ".json":
        report = json.loads(path.read_text())
        return report.get("onnx") if isinstance(report, dict) else None
    props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    return props.get("deploy_id") if deploy else path.name
