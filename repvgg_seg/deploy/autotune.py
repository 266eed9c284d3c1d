"""Per-shape choice between two implementations of a conv, by timing both on first use.

The deployed model's :class:`repvgg_seg.deploy.winograd.WinogradConv2d` in ``auto`` mode asks
:data:`AUTOTUNER` whether Winograd beats the direct conv for the input it got, as cuDNN's
autotuner picks among its algorithms: whichever path is faster on this CPU, at this shape
and thread count, runs from then on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from ..errors import UsageError

logger = logging.getLogger(__name__)

WINOGRAD_MODES = ("off", "on", "auto")


def winograd_mode(value: bool | str) -> str:
    """The mode named by ``value``: one of :data:`WINOGRAD_MODES`, or a bool.

    ``True`` is what deploy configs held before the modes existed ("Winograd where it
    applies", written for speed): it means ``auto``, which keeps that promise on every CPU.
    """
    if isinstance(value, bool):
        return "auto" if value else "off"
    if value not in WINOGRAD_MODES:
        raise UsageError(f"winograd must be one of {WINOGRAD_MODES} (or a bool), got {value!r}.")
    return value


def _wall_clock(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


@dataclass
class ConvAutotuner:
    """Chooses the direct conv or Winograd per conv shape by timing both on first use.

    Each path runs once untimed (oneDNN creates its primitive, Winograd transforms the
    weight), then ``repeats`` timed calls of each, alternating so that a machine's drift
    hits both; the smaller minimum wins. The decision is kept for the process.

    Attributes:
        timer: Seconds of one call of a function (a wall clock; tests inject their own).
        repeats: Timed calls of each path.
        decisions: Shape key -> (direct seconds, Winograd seconds).
    """

    timer: Callable[[Callable[[], object]], float] = _wall_clock
    repeats: int = 2
    decisions: dict[Hashable, tuple[float, float]] = field(default_factory=dict)

    def use_winograd(
        self, key: Hashable, direct: Callable[[], object], winograd: Callable[[], object]
    ) -> bool:
        """Whether ``winograd`` is faster than ``direct`` for ``key`` (timed once per key)."""
        if key not in self.decisions:
            direct()
            winograd()
            best = [float("inf"), float("inf")]
            for _ in range(self.repeats):
                for index, run in enumerate((direct, winograd)):
                    best[index] = min(best[index], self.timer(run))
            self.decisions[key] = (best[0], best[1])
            logger.info(
                "conv %s: direct %.1f ms, Winograd %.1f ms", key, 1e3 * best[0], 1e3 * best[1]
            )
        direct_seconds, winograd_seconds = self.decisions[key]
        return winograd_seconds < direct_seconds


AUTOTUNER = ConvAutotuner()
"""The process's decisions for every :class:`WinogradConv2d` in ``auto`` mode."""
