"""What every command line in ``tools/`` shares: config loading and how a run ends.

The top floor of the package: only ``tools/`` imports it. Every tool's ``__main__`` is::

    if __name__ == "__main__":
        run_tool(main)

so every tool ends the same way (argparse's own form):

- a refusal (the package's :class:`UsageError` / :class:`CheckFailedError` family, raised
  where the cause is the user's input or a check the run exists to make, and the OS errors
  that name a user's path) is one line ``<tool>: error: <message>`` on stderr; exit status
  2 for bad input (a missing or unreadable file, a value that does not fit), 1 for a check
  that failed (a fused model that differs, a quantized model below its bar, a download);
- any other exception is a bug: its traceback, then one line saying so and how to report
  it; exit status 3;
- 130 for Ctrl-C, 143 for SIGTERM (``kill``), which unwinds like Ctrl-C so that the run's
  cleanup (a deploy's staging folder, temporary files) happens.

``--verbose`` also prints the traceback of a refusal. Tools never print ``ERROR:``
themselves.

A tool is quiet by default: :func:`run_tool` first silences the known third-party messages
that every normal run would print and that say nothing about the run (:func:`quiet_third_party`);
``--verbose`` anywhere on the command line, or ``REPVGG_SEG_VERBOSE=1``, keeps them.

A tool that takes ``--cfg-options`` declares it with this package's :class:`DictAction`
(mmengine's, plus mmseg-style ``dict(...)`` values) and reads its config with
:func:`load_config`.
"""

from __future__ import annotations

from ..errors import CheckFailedError, UsageError
from .config import DictAction, format_options, load_config, set_work_dir
from .quiet import (
    KINETO_LOG_LEVEL,
    NOISY_LOGGERS,
    NOISY_MMENGINE_WARNINGS,
    NOISY_WARNINGS,
    ORT_LOG_SEVERITY,
    VERBOSE_ENV,
    VERBOSE_FLAG,
    quiet_third_party,
    take_verbose_flag,
)
from .run import (
    BAD_INPUT,
    BUG_ADVICE,
    EXIT_BAD_INPUT,
    EXIT_BUG,
    EXIT_FAILED_CHECK,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    FAILED_CHECK,
    ConsoleLine,
    fail,
    one_line,
    refusal_status,
    run_tool,
    sigterm_interrupts,
    tool_name,
)

__all__ = [
    "BAD_INPUT",
    "BUG_ADVICE",
    "EXIT_BAD_INPUT",
    "EXIT_BUG",
    "EXIT_FAILED_CHECK",
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
    "FAILED_CHECK",
    "KINETO_LOG_LEVEL",
    "NOISY_LOGGERS",
    "NOISY_MMENGINE_WARNINGS",
    "NOISY_WARNINGS",
    "ORT_LOG_SEVERITY",
    "VERBOSE_ENV",
    "VERBOSE_FLAG",
    "CheckFailedError",
    "ConsoleLine",
    "DictAction",
    "UsageError",
    "fail",
    "format_options",
    "load_config",
    "one_line",
    "quiet_third_party",
    "refusal_status",
    "run_tool",
    "set_work_dir",
    "sigterm_interrupts",
    "take_verbose_flag",
    "tool_name",
]
