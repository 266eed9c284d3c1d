"""Quiet by default: the third-party messages a normal run prints that say nothing about it.

Only :func:`~.run.run_tool` uses this, around a tool's ``main``; the library hides nothing.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from types import ModuleType

from mmengine.logging import MMLogger

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
# ONNX Runtime logs a failed run in red ("[E:onnxruntime:...] Non-zero status code ...")
# before the exception that the tool reports in its own line: 4 (FATAL) hides that, and 2
# (WARNING) is its default, set back after (ONNX Runtime has no getter).
ORT_LOG_SEVERITY = (4, 2)


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


def _onnxruntime() -> ModuleType | None:
    """ONNX Runtime, imported (0.1 s) before any tool makes a session; None without it."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    return importlib.import_module("onnxruntime")


@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
    """Silences :data:`NOISY_WARNINGS`, :data:`NOISY_MMENGINE_WARNINGS`, :data:`NOISY_LOGGERS`,
    Kineto's console lines and ONNX Runtime's log inside the ``with`` block; everything is
    restored after it (tests run tools in-process). Only tools use it: the library never
    hides a warning."""
    levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    onnxruntime = _onnxruntime()
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
        if onnxruntime is not None:
            onnxruntime.set_default_logger_severity(ORT_LOG_SEVERITY[0])
        try:
            yield
        finally:
            if onnxruntime is not None:
                onnxruntime.set_default_logger_severity(ORT_LOG_SEVERITY[1])
            MMLogger.callHandlers = call_handlers
            if kineto_before is None:
                os.environ.pop(kineto_name, None)
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
