"""The results as a Markdown table and as plain rows (CSV, JSON)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from .settings import CaseResult

COLUMNS = (
    ("name", "model", "{}"),
    ("images_per_s", "img/s", "{:.3f}"),
    ("median_ms", "median ms", "{:.1f}"),
    ("min_ms", "min ms", "{:.1f}"),
    ("max_ms", "max ms", "{:.1f}"),
    ("spread_pct", "spread %", "{:.1f}"),
    ("relative_speed", "speed vs first", "{:.3f}"),
    ("gmacs", "GMACs", "{:.1f}"),
    ("params_m", "params M", "{:.2f}"),
    ("gmacs_per_s", "GMAC/s", "{:.1f}"),
    ("tflops", "TFLOP/s", "{:.2f}"),
    ("matmul_pct", "% of peak", "{:.0f}"),
    ("peak_memory_mb", "peak MB", "{:.0f}"),
)


def format_table(results: Sequence[CaseResult]) -> str:
    """A Markdown table of the results.

    Columns that no result fills are left out; a cell a result leaves empty (peak memory of
    a runtime that allocates outside PyTorch) shows ``-``.
    """
    columns = [c for c in COLUMNS if any(getattr(r, c[0]) is not None for r in results)]
    rows = [
        ["-" if getattr(r, key) is None else fmt.format(getattr(r, key)) for key, _, fmt in columns]
        for r in results
    ]
    header = [title for _, title, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def results_as_dicts(results: Sequence[CaseResult]) -> list[dict]:
    """The results as plain dicts (for CSV and JSON)."""
    return [asdict(r) for r in results]
