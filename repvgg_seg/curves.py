"""Training curves: read a run's logged scalars and draw them, one panel per quantity.

Two kinds of run directory are understood:

- an mmengine work dir (``tools/train.py``, the demo): every run in it (a ``<timestamp>/``
  folder, one per start, ``--resume`` included) logs ``<timestamp>/vis_data/scalars.json``,
  one JSON object per line: training records (``loss``, ``lr``, ... at ``step`` = iteration)
  and validation records (``mIoU``, ``mAcc``, ``aAcc`` at the iteration they followed);
- a pretraining output dir (``tools/pretrain_imagenet.py``): ``metrics.jsonl``, one record
  per epoch (``train_loss``, ``val_loss``, ``lr``, ``acc1``, ...).

The figure is drawn with matplotlib's Agg canvas (no display, no global backend switch) and
written atomically.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from .atomic_io import write_atomically
from .errors import UsageError
from .pretrain.output_files import METRICS_NAME

SCALARS_NAME = "scalars.json"

# (panel title, y label, {series label: record key}) per kind of run.
SEGMENTATION_PANELS = (
    ("loss", "training loss", {"loss": "loss"}),
    ("learning rate", "learning rate", {"lr": "lr"}),
    ("val mIoU", "mIoU (%)", {"mIoU": "mIoU"}),
)
PRETRAINING_PANELS = (
    ("loss", "loss", {"train": "train_loss", "val": "val_loss"}),
    ("learning rate", "learning rate", {"lr": "lr"}),
    ("val top-1", "top-1 (%)", {"top-1": "acc1", "top-1 EMA": "acc1_ema"}),
)


class NoLogsError(UsageError):
    """A directory holds no log this module can read (the message names it)."""


class LogFileError(UsageError):
    """A log that is not text, or a logged value that is not a number (the message names
    the file and the line)."""


@dataclass(frozen=True)
class RunCurves:
    """The curves of one run: for each panel, each series' (x, y) points, x ascending."""

    name: str
    kind: str  # "segmentation" (x: iteration) or "pretraining" (x: epoch)
    panels: dict[str, dict[str, list[tuple[float, float]]]] = field(default_factory=dict)

    @property
    def x_label(self) -> str:
        return "iteration" if self.kind == "segmentation" else "epoch"


def scalar_files(work_dir: Path) -> list[Path]:
    """A work dir's ``scalars.json`` files, oldest run first (timestamps sort by name).

    ``work_dir`` may also be one ``<timestamp>/`` folder or a ``scalars.json`` itself.
    """
    if work_dir.is_file():
        return [work_dir]
    found = sorted(work_dir.glob(f"*/vis_data/{SCALARS_NAME}"))
    return found or sorted(work_dir.glob(f"vis_data/{SCALARS_NAME}"))


@dataclass(frozen=True)
class LogRecord:
    """One JSON object of a log, with where it was read (for messages)."""

    where: str  # "<file> line <n>"
    values: dict


def read_json_lines(path: Path) -> list[LogRecord]:
    """The JSON objects of ``path``, one per line; a line cut short (a run killed while it
    wrote) is skipped.

    Raises:
        LogFileError: The file cannot be read, or is not UTF-8 text (the message names it).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise LogFileError(
            f"{path} is not a text log (byte {error.start} is not UTF-8): it is damaged or "
            "not a log mmengine or tools/pretrain_imagenet.py wrote; move it out of the run "
            "folder or pass another one."
        ) from None
    except OSError as error:
        raise LogFileError(f"{path} cannot be read ({error.strerror or error}).") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(LogRecord(f"{path} line {number}", record))
    return records


def _number(record: LogRecord, key: str) -> float:
    """``record``'s value of ``key`` as a float; anything but a JSON number is refused."""
    value = record.values[key]
    # bool is an int to Python, but true/false in a log is no measurement.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LogFileError(
            f"{record.where}: {key!r} is {json.dumps(value)[:40]}, not a number: the log is "
            "damaged or was edited; repair or delete that line."
        )
    return float(value)


def _points(records: Sequence[LogRecord], key: str, x_key: str) -> list[tuple[float, float]]:
    """(x, value) of every record holding ``key``; for an x logged twice (a resumed run
    repeats the iterations after its last checkpoint), the later record wins."""
    by_x = {}
    for record in records:
        if key in record.values and x_key in record.values:
            by_x[_number(record, x_key)] = _number(record, key)
    return sorted(by_x.items())


def _collect(
    records: Sequence[LogRecord], panels: tuple, x_key: str
) -> dict[str, dict[str, list[tuple[float, float]]]]:
    collected = {}
    for title, _, series in panels:
        lines = {label: _points(records, key, x_key) for label, key in series.items()}
        collected[title] = {label: points for label, points in lines.items() if points}
    return collected


def read_run(path: str | Path, name: str | None = None) -> RunCurves:
    """The curves of the run logged in ``path`` (a work dir or a pretraining output dir).

    Raises:
        NoLogsError: ``path`` does not exist or holds neither ``*/vis_data/scalars.json``
            nor ``metrics.jsonl``, or those hold no training record.
        LogFileError: A log is not text, or a logged value is not a number.
    """
    path = Path(path)
    name = name or path.name or str(path)
    if not path.exists():
        raise NoLogsError(f"{path} does not exist; pass a training work dir or pretraining dir.")
    if (path / METRICS_NAME).is_file():
        kind, panels = (
            "pretraining",
            _collect(read_json_lines(path / METRICS_NAME), PRETRAINING_PANELS, "epoch"),
        )
    else:
        files = scalar_files(path)
        if not files:
            raise NoLogsError(
                f"{path} holds no training log: expected <timestamp>/vis_data/{SCALARS_NAME} "
                f"(tools/train.py --work-dir) or {METRICS_NAME} (tools/pretrain_imagenet.py "
                "--output-dir)."
            )
        records = [record for file in files for record in read_json_lines(file)]
        kind, panels = "segmentation", _collect(records, SEGMENTATION_PANELS, "step")
    if not any(panels.values()):
        raise NoLogsError(f"{path}: its logs hold no training record yet (no logged iteration).")
    return RunCurves(name=name, kind=kind, panels=panels)


def unique_names(paths: Sequence[str | Path]) -> list[str]:
    """Legend names for ``paths``: the last folder name, or more of the path where two
    runs share it (``a/demo`` and ``b/demo``)."""
    parts = [Path(p).resolve().parts for p in paths]
    depth = 1
    while depth < max(len(p) for p in parts):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
        depth += 1
    return [str(p) for p in paths]


def _spans_decades(ax, decades: float = 2.0) -> bool:
    values = [y for line in ax.get_lines() for y in line.get_ydata()]
    return bool(values) and min(values) > 0 and max(values) / min(values) > 10**decades


def plot_runs(runs: Sequence[RunCurves], out: str | Path, title: str | None = None) -> Path:
    """Draws ``runs`` overlaid, one panel per quantity, into the PNG ``out`` (atomically).

    Raises:
        NoLogsError: ``runs`` is empty.
        UsageError: The runs are of different kinds (iterations and epochs on one axis).
    """
    if not runs:
        raise NoLogsError("No run to plot.")
    kinds = {run.kind for run in runs}
    if len(kinds) > 1:
        names = ", ".join(f"{run.name} ({run.kind})" for run in runs)
        raise UsageError(
            f"Cannot overlay segmentation and pretraining runs ({names}): "
            "plot each kind in its own figure."
        )
    titles = list(runs[0].panels)
    figure = Figure(figsize=(4.2 * len(titles), 3.4), layout="constrained")
    axes = figure.subplots(1, len(titles), squeeze=False)[0]
    panels = SEGMENTATION_PANELS if runs[0].kind == "segmentation" else PRETRAINING_PANELS
    y_labels = {panel[0]: panel[1] for panel in panels}
    for ax, panel in zip(axes, titles):
        for run in runs:
            for label, points in run.panels.get(panel, {}).items():
                xs, ys = zip(*points)
                legend = label
                if len(runs) > 1:
                    several = len(run.panels[panel]) > 1
                    legend = f"{run.name}: {label}" if several else run.name
                ax.plot(xs, ys, marker="o" if len(xs) < 12 else None, label=legend)
        ax.set_title(panel)
        ax.set_xlabel(runs[0].x_label)
        ax.set_ylabel(y_labels[panel])
        ax.grid(alpha=0.3)
        if panel == "loss" and _spans_decades(ax):
            ax.set_yscale("log")  # a first val loss can be 1000x the train loss
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    if title:
        figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return write_atomically(out, lambda file: file.write(buffer.getvalue()))
