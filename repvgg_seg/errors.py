"""The package's exception family for refusals a user can act on.

The lowest floor: no other package module. Library code raises :class:`UsageError` where
the cause is the user's input (a file, a value, a flag) and :class:`CheckFailedError` where
a check the run exists to make failed; ``cli.run_tool`` turns these (and their subclasses)
into one line and exit status 2 or 1. Anything else is a bug and keeps its traceback.
:func:`preview_keys` is how their messages list the keys or tensors at fault.

:class:`UsageError` derives from ``ValueError`` so that callers that caught the
``ValueError`` a constructor used to raise still catch it; ``cli`` maps only this family,
never a bare ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Iterable


class UsageError(ValueError):
    """Bad input from the user: the message names the file or value and what to do instead."""


class CheckFailedError(RuntimeError):
    """A check the run exists to make failed (the message says which and by how much)."""


def preview_keys(keys: Iterable[object], limit: int = 5) -> str:
    """``'a', 'b', 'c' and 4 more``: the start of a key list, for refusals' messages."""
    keys = list(keys)
    shown = ", ".join(repr(key) for key in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
