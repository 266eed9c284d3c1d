"""How a tool's run ends: a refusal is one line, a bug keeps its traceback, signals unwind.

See :mod:`repvgg_seg.cli` for the statuses.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

from ..errors import CheckFailedError, UsageError
from .quiet import quiet_third_party, take_verbose_flag

EXIT_FAILED_CHECK = 1
EXIT_BAD_INPUT = 2
EXIT_BUG = 3  # as pytest's "internal error": not the user's input, not a failed check
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM
BUG_ADVICE = (
    'please report it with the command and this traceback (README.md, "Reporting problems")'
)


# Refusals: exception types whose message is written for a user, one line and exit 2 / 1.
# The package's own error types all derive from UsageError or CheckFailedError
# (repvgg_seg/errors.py); these OS errors name the user's path (a missing checkpoint, an
# existing output). A bare ValueError, from the package or a library, is a bug.
BAD_INPUT: tuple[type[BaseException], ...] = (
    UsageError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
)
# A download that failed (network, deadline, sha256) is no error in the user's input: exit 1.
FAILED_CHECK: tuple[type[BaseException], ...] = (CheckFailedError, ConnectionError)


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


def refusal_status(error: BaseException) -> int | None:
    """The exit status of a refusal (a message written for the user); None for a bug.

    An ``OSError`` the OS raised for a path (``PermissionError``, a read-only file system)
    names it, and the path is the user's: a file or folder they cannot read or write. One
    without a path (a bare ``PermissionError``) is a bug. The package itself raises
    :class:`UsageError` for a folder it cannot write.
    """
    if isinstance(error, FAILED_CHECK):
        return EXIT_FAILED_CHECK
    if isinstance(error, BAD_INPUT):
        return EXIT_BAD_INPUT
    if isinstance(error, OSError) and error.filename is not None:
        return EXIT_BAD_INPUT
    return None


def run_tool(main: Callable[[], int | None]) -> NoReturn:
    """Runs a tool's ``main`` and ends the process with the status the conventions give.

    Quiet (:func:`quiet_third_party`) unless ``--verbose`` is on the command line or
    ``REPVGG_SEG_VERBOSE=1``. A ``main`` that returns something other than an int (a metrics
    dict) ends with status 0.
    """
    verbose = take_verbose_flag()
    quiet = contextlib.nullcontext() if verbose else quiet_third_party()
    terminated: list[int] = []
    console = ConsoleLine()
    try:
        with quiet, sigterm_interrupts(terminated), console.watching():
            status = main()
    except KeyboardInterrupt:
        console.end_line()
        fail(
            "terminated (SIGTERM)" if terminated else "interrupted (Ctrl-C)",
            EXIT_TERMINATED if terminated else EXIT_INTERRUPTED,
        )
    except Exception as error:
        console.end_line()
        refusal = refusal_status(error)
        if refusal is None or verbose:
            traceback.print_exc()
        if refusal is not None:
            fail(one_line(error), refusal)
        fail(
            f"this is a bug in repvgg_seg ({type(error).__name__}: {one_line(error)}); "
            f"{BUG_ADVICE}.",
            EXIT_BUG,
        )
    sys.exit(status if isinstance(status, int) else 0)


class ConsoleLine:
    """Whether the console's cursor is mid-line: an unfinished progress bar (mmengine's
    ``ProgressBar``, tqdm, ``tools/infer.py``'s) ends with ``\\r`` text and no newline, and the
    tool's last line must not be glued to it."""

    def __init__(self) -> None:
        self.mid_line = False

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Inside, text written to ``sys.stdout`` / ``sys.stderr`` is watched.

        The streams' own ``write`` is wrapped (not the ``sys`` names), because a progress bar
        may hold the stream it got when it was imported (mmengine's ``file=sys.stdout``
        default); a stream that takes no attribute is not watched.
        """
        streams = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
        wrapped = []
        for stream in {id(stream): stream for stream in streams if stream is not None}.values():
            try:
                before = vars(stream).get("write")
                stream.write = self._watch(stream.write)
            except (AttributeError, TypeError):
                continue
            wrapped.append((stream, before))
        try:
            yield
        finally:
            for stream, before in wrapped:
                if before is None:
                    del stream.write
                else:
                    stream.write = before

    def _watch(self, write: Callable[[str], int]) -> Callable[[str], int]:
        def watched_write(text: str) -> int:
            if text:
                self.mid_line = not text.endswith("\n")
            return write(text)

        return watched_write

    def end_line(self) -> None:
        """Ends the unfinished line, if any."""
        if self.mid_line:
            print(file=sys.stderr, flush=True)
            self.mid_line = False


@contextlib.contextmanager
def sigterm_interrupts(received: list[int]) -> Iterator[None]:
    """Inside, SIGTERM raises KeyboardInterrupt (and is appended to ``received``).

    Python's default SIGTERM ends the process without unwinding: ``with`` blocks and
    ``finally`` clauses, which remove a run's staging folder and temporary files, would not
    run. A second SIGTERM (during that cleanup) ends the process as before, and so does one
    sent to a forked child. Only the main thread can install handlers; elsewhere, or when
    SIGTERM is ignored or handled already, nothing changes.
    """
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or previous != signal.SIG_DFL:
        yield
        return

    owner = os.getpid()

    def interrupt(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, previous)
        if os.getpid() != owner:  # a forked child (a DataLoader worker) ends as it did
            os.kill(os.getpid(), signal.SIGTERM)
            return
        received.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
