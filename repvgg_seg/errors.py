"""The package's exception family for refusals a user can act on.

The lowest floor: no other package module. Library code raises :class:`UsageError` where
the cause is the user's input (a file, a value, a flag) and :class:`CheckFailedError` where
a check the run exists to make failed; ``cli.run_tool`` turns these (and their subclasses)
into one line and exit status 2 or 1. Anything else is a bug and keeps its traceback.

:class:`UsageError` derives from ``ValueError`` so that callers that caught the
``ValueError`` a constructor used to raise still catch it; ``cli`` maps only this family,
never a bare ``ValueError``.
"""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input from the user: the message names the file or value and what to do instead."""


class CheckFailedError(RuntimeError):
    """A check the run exists to make failed (the message says which and by how much)."""
