"""What every command line in ``tools/`` shares: config loading and how a run ends.

The top floor of the package: only ``tools/`` imports it. Every tool's ``__main__`` is::

    if __name__ == "__main__":
        run_tool(main)

so a user's error ends every tool the same way (argparse's own form):

- one line ``<tool>: error: <message>`` on stderr, no traceback;
- exit status 2 for bad input (a missing or unreadable file, a value that does not fit),
  1 for a check that failed (a fused model that differs, a quantized model below its bar),
  130 for Ctrl-C.

Library code raises :class:`UsageError` / :class:`CheckFailedError` (or the package's own
error types listed in :data:`BAD_INPUT` and :data:`FAILED_CHECK`); tools never print
``ERROR:`` themselves.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from mmengine.config import Config

from .checkpoint import CheckpointError
from .datasets import CityscapesDataError
from .equivalence import FusionMismatchError
from .weights import ChecksumError
from .work_dir import WorkDirBusyError

EXIT_FAILED_CHECK = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad input from the user: the message names the file or value and what to do instead."""


class CheckFailedError(Exception):
    """A check the run exists to make failed (the message says which and by how much)."""


# Exception types whose message is written for a user: one line, exit 2 / exit 1.
BAD_INPUT: tuple[type[BaseException], ...] = (
    UsageError,
    CheckpointError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    ValueError,
    WorkDirBusyError,
    CityscapesDataError,
)
# A download that failed (network, deadline, sha256) is no error in the user's input: exit 1.
FAILED_CHECK: tuple[type[BaseException], ...] = (
    CheckFailedError,
    FusionMismatchError,
    ChecksumError,
    ConnectionError,
)


def one_line(error: BaseException) -> str:
    """The message of ``error`` as one line; of one re-raised from a DataLoader worker, the
    original's (torch's ExceptionWrapper puts the worker's traceback into the message)."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    return " ".join(text.split()) or type(error).__name__


def tool_name(argv0: str | None = None) -> str:
    """``tools/<name>.py`` for the running tool (as argparse names it)."""
    path = Path(argv0 if argv0 is not None else sys.argv[0])
    return f"{path.parent.name}/{path.name}" if path.parent.name == "tools" else path.name


def fail(message: str, status: int = EXIT_BAD_INPUT) -> NoReturn:
    """Ends the run with ``<tool>: error: <message>`` on stderr and ``status``."""
    print(f"{tool_name()}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def run_tool(main: Callable[[], int | None]) -> NoReturn:
    """Runs a tool's ``main`` and ends the process with the status the conventions give."""
    try:
        status = main()
    except FAILED_CHECK as error:
        fail(one_line(error), EXIT_FAILED_CHECK)
    except BAD_INPUT as error:
        fail(one_line(error), EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        fail("interrupted (Ctrl-C)", EXIT_INTERRUPTED)
    sys.exit(status or 0)


def load_config(path: str | os.PathLike, cfg_options: dict | None = None) -> Config:
    """The config file with ``--cfg-options`` merged in.

    Raises:
        UsageError: The file does not exist, is not a config, or an option does not apply.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(
            f"Config file '{path}' does not exist (working directory: {os.getcwd()}); pass "
            "one of the files under configs/, e.g. configs/pspnet_repvgg_a0_synthetic.py."
        )
    try:
        cfg = Config.fromfile(str(path))
    except Exception as error:  # mmengine raises SyntaxError, KeyError, ImportError, ...
        raise UsageError(f"Config file '{path}' cannot be read: {one_line(error)}") from error
    if cfg_options:
        try:
            cfg.merge_from_dict(cfg_options)
        except Exception as error:
            raise UsageError(f"--cfg-options do not apply to '{path}': {one_line(error)}") from error
    return cfg


def format_options(options: Sequence[str]) -> str:
    """``a, b or c`` for a message listing the accepted values."""
    options = list(options)
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"
