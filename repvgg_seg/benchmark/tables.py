"""The results as a Markdown table and as plain rows, and the CSV and JSON files of a run."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path

from ..atomic_io import write_atomically
from ..errors import UsageError
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


CSV_HEADER = ",".join(f.name for f in fields(CaseResult))
"""The first line of every CSV file :func:`write_report_files` writes."""


def _written_by_benchmark(path: Path) -> bool:
    """Whether ``path`` holds a table or a run record that this module wrote."""
    try:
        if path.stat().st_size > 2**26:  # a run's record is kilobytes
            return False
        text = path.read_text(encoding="utf-8")
        if text.partition("\n")[0].strip() == CSV_HEADER:
            return True
        record = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(record, dict) and {"settings", "results"} <= set(record)


def check_report_path(path: Path, option: str) -> None:
    """Refuses an output file that a run could not write, or must not replace, before the run.

    A run takes minutes; a path that fails only when the results are written loses them.

    Raises:
        UsageError: ``path`` is a folder, lies under a file, is in a folder this user cannot
            write, or is an existing file that is not one this benchmark wrote (the
            message names ``option``).
    """
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; pass a file name, e.g. {path}/speed.csv.")
    if path.exists():
        if not _written_by_benchmark(path):
            raise UsageError(
                f"{option} {path} exists and is not a benchmark {path.suffix or 'file'} this "
                "tool wrote; pass a new file name (nothing was replaced)."
            )
        if not os.access(path, os.W_OK):
            raise UsageError(f"{option} {path} is read-only; pass a file you can write.")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{option} {path}: {ancestor} is a file, not a folder; pass another path.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: cannot write in {ancestor}; pass another path.")


def check_report_paths(csv_path: Path | None, json_path: Path | None) -> None:
    """:func:`check_report_path` for each file asked for, and that they differ."""
    if csv_path and json_path and csv_path.resolve() == json_path.resolve():
        raise UsageError(f"--csv and --json are both {csv_path}; pass two file names.")
    for option, path in (("--csv", csv_path), ("--json", json_path)):
        if path is not None:
            check_report_path(path, option)


def write_report_files(
    results: Sequence[CaseResult], record: dict, csv_path: Path | None, json_path: Path | None
) -> None:
    """The table as CSV and the whole run as JSON, where asked for (written atomically)."""
    if csv_path:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=CSV_HEADER.split(","))
        writer.writeheader()
        writer.writerows(results_as_dicts(results))
        write_atomically(csv_path, lambda file: file.write(text.getvalue().encode()))
    if json_path:
        data = json.dumps(record, indent=2).encode()
        write_atomically(json_path, lambda file: file.write(data))
