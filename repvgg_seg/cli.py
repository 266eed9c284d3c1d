"""What every command line in ``tools/`` shares: config loading and how a run ends.

The top floor of the package: only ``tools/`` imports it. Every tool's ``__main__`` is::

    if __name__ == "__main__":
        run_tool(main)

so a user's error ends every tool the same way (argparse's own form):

- one line ``<tool>: error: <message>`` on stderr, no traceback;
- exit status 2 for bad input (a missing or unreadable file, a value that does not fit),
  1 for a check that failed (a fused model that differs, a quantized model below its bar),
  130 for Ctrl-C, 143 for SIGTERM (``kill``), which unwinds like Ctrl-C so that the
  run's cleanup (a deploy's staging folder, temporary files) happens.

Library code raises :class:`UsageError` / :class:`CheckFailedError` (or the package's own
error types listed in :data:`BAD_INPUT` and :data:`FAILED_CHECK`); tools never print
``ERROR:`` themselves.

A tool is quiet by default: :func:`run_tool` first silences the known third-party messages
that every normal run would print and that say nothing about the run (:func:`quiet_third_party`);
``--verbose`` anywhere on the command line, or ``REPVGG_SEG_VERBOSE=1``, keeps them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from mmengine.config import Config
from mmengine.logging import MMLogger

from .checkpoint import CheckpointError
from .datasets import CityscapesDataError
from .dir_lock import WorkDirBusyError
from .equivalence import FusionMismatchError
from .errors import CheckFailedError, UsageError
from .weights import ChecksumError

EXIT_FAILED_CHECK = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM


# Exception types whose message is written for a user: one line, exit 2 / exit 1.
BAD_INPUT: tuple[type[BaseException], ...] = (
    UsageError,
    CheckpointError,
    FileNotFoundError,
    FileExistsError,
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


VERBOSE_FLAG = "--verbose"
VERBOSE_ENV = "REPVGG_SEG_VERBOSE"

# Third-party messages of normal runs that say nothing about the run, silenced in tools.
# Warnings: (message regex, category, module regex of the code that warns).
NOISY_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    (r"``build_loss`` would be deprecated", UserWarning, r"mmseg\."),  # mmseg's own heads
    (r"Default ``avg_non_ignore`` is False", UserWarning, r"mmseg\."),  # its CE loss default
    (r"The draw is False", UserWarning, r"mmseg\."),  # visualization hook without --show-dir
    # mmseg's resize() with align_corners=True (the paper-recipe configs) on sizes that are
    # not n*x+1: the result is still the configured interpolation.
    (r"When align_corners=True, the output would more aligned", UserWarning, r"mmseg\."),
    # --amp: GradScaler skips the optimizer step of a batch with inf/nan gradients (its first
    # scale search), and the LR scheduler our pretraining engine steps per batch then warns.
    (r"Detected call of `lr_scheduler.step\(\)` before", UserWarning, r"repvgg_seg\.pretrain\."),
)
# mmengine's logger (MMLogger): the start of a WARNING message.
NOISY_MMENGINE_WARNINGS: tuple[str, ...] = (
    "The prefix is not set in metric class",  # mmseg's IoUMetric has no default prefix
    '"FileClient" will be deprecated',  # mmengine's CheckpointHook uses its own old API
    '"HardDiskBackend" is the alias',
)
# Loggers raised to ERROR: torch's extension loader warns "No CUDA runtime is found" on a
# CPU machine that has nvcc (mmengine's environment report imports it).
NOISY_LOGGERS: tuple[str, ...] = ("torch.utils.cpp_extension",)
# torch.profiler's Kineto prints "USDT: ... profiler_start/stop" and, on a CPU machine,
# "ERROR: ... gpuGetDeviceCount failed with code 35" straight to stderr; 6 is above its
# highest level. Kineto reads it when a profiler first starts, after the tool's imports.
KINETO_LOG_LEVEL = ("KINETO_LOG_LEVEL", "6")


def take_verbose_flag(argv: list[str] | None = None) -> bool:
    """Whether the run is verbose; removes ``--verbose`` from ``argv`` (``sys.argv``), so
    that every tool accepts it without declaring it."""
    argv = sys.argv if argv is None else argv
    verbose = VERBOSE_FLAG in argv[1:]
    argv[1:] = [arg for arg in argv[1:] if arg != VERBOSE_FLAG]
    return verbose or os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def _is_noise(record: logging.LogRecord) -> bool:
    return record.levelno == logging.WARNING and str(record.msg).startswith(NOISY_MMENGINE_WARNINGS)


def _drop_noise(call_handlers: Callable) -> Callable:
    def call_handlers_without_noise(self: MMLogger, record: logging.LogRecord) -> None:
        if not _is_noise(record):
            call_handlers(self, record)

    return call_handlers_without_noise


@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
    """Silences :data:`NOISY_WARNINGS`, :data:`NOISY_MMENGINE_WARNINGS`, :data:`NOISY_LOGGERS`
    and Kineto's console lines inside the ``with`` block; everything is restored after it
    (tests run tools in-process). Only tools use it: the library never hides a warning."""
    levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    kineto_name, kineto_level = KINETO_LOG_LEVEL
    kineto_before = os.environ.get(kineto_name)
    call_handlers = MMLogger.callHandlers
    with warnings.catch_warnings():
        for message, category, module in NOISY_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        os.environ.setdefault(kineto_name, kineto_level)
        # A Runner makes its MMLogger after this runs, and MMLogger.callHandlers is the one
        # way out of every instance (it bypasses logging's hierarchy): the filter sits there.
        MMLogger.callHandlers = _drop_noise(call_handlers)
        try:
            yield
        finally:
            MMLogger.callHandlers = call_handlers
            if kineto_before is None:
                os.environ.pop(kineto_name, None)
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def run_tool(main: Callable[[], int | None]) -> NoReturn:
    """Runs a tool's ``main`` and ends the process with the status the conventions give.

    Quiet (:func:`quiet_third_party`) unless ``--verbose`` is on the command line or
    ``REPVGG_SEG_VERBOSE=1``. A ``main`` that returns something other than an int (a metrics
    dict) ends with status 0.
    """
    quiet = contextlib.nullcontext() if take_verbose_flag() else quiet_third_party()
    terminated: list[int] = []
    try:
        with quiet, sigterm_interrupts(terminated):
            status = main()
    except FAILED_CHECK as error:
        fail(one_line(error), EXIT_FAILED_CHECK)
    except BAD_INPUT as error:
        fail(one_line(error), EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        if terminated:
            fail("terminated (SIGTERM)", EXIT_TERMINATED)
        fail("interrupted (Ctrl-C)", EXIT_INTERRUPTED)
    sys.exit(status if isinstance(status, int) else 0)


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
            raise UsageError(
                f"--cfg-options do not apply to '{path}': {one_line(error)}"
            ) from error
    return cfg


def set_work_dir(cfg: Config, config_path: str | os.PathLike, work_dir: str | None) -> None:
    """mmseg's rule: ``--work-dir``, else the config's ``work_dir``, else
    ``work_dirs/<config name>``, where a config under a ``configs/`` folder is named by its
    path there: ``configs/mmseg_style/pspnet_r50.py`` -> ``work_dirs/mmseg_style/pspnet_r50``,
    so that the two config families' same-named files never share a work dir."""
    if work_dir:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        parts = Path(config_path).resolve().with_suffix("").parts
        below = len(parts) - parts[::-1].index("configs") if "configs" in parts else -1
        cfg.work_dir = os.path.join("work_dirs", *parts[below:])


def format_options(options: Sequence[str]) -> str:
    """``a, b or c`` for a message listing the accepted values."""
    options = list(options)
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"
