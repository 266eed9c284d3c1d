"""Drawing a label map over its image, with a legend of the classes present.

Class names and colours come from mmseg's dataset tables (``mmseg.utils.get_classes`` /
``get_palette``). mmseg's own ``SegLocalVisualizer`` blends the same way but writes each class
name at the centre of its region, which hides small regions and repeats names; here a legend
in the top-left corner lists every class present, largest area first, so the image itself
stays readable.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from mmseg.utils import dataset_aliases, get_classes, get_palette

from ..errors import UsageError

PALETTE_NAMES = tuple(sorted(alias for aliases in dataset_aliases.values() for alias in aliases))


@dataclass(frozen=True)
class Palette:
    """Class names and their RGB colours (``colors[i]`` is class ``i``'s)."""

    name: str
    classes: tuple[str, ...]
    colors: np.ndarray  # (num_classes, 3) uint8

    @classmethod
    def from_dataset(cls, name: str) -> Palette:
        """The classes and palette of an mmseg dataset (``cityscapes``, ``ade20k``, ...).

        Raises:
            UsageError: mmseg knows no dataset of that name.
        """
        if name not in PALETTE_NAMES:
            raise UsageError(f"Unknown palette {name!r}; choose one of {', '.join(PALETTE_NAMES)}.")
        classes = tuple(get_classes(name))
        return cls(name, classes, np.asarray(get_palette(name), dtype=np.uint8).reshape(-1, 3))


def legend_entries(labels: np.ndarray, num_classes: int) -> list[tuple[int, float]]:
    """The classes present in a label map, largest area first: ``(class, area fraction)``."""
    counts = np.bincount(labels.ravel(), minlength=num_classes)[:num_classes]
    present = np.flatnonzero(counts)
    order = present[np.argsort(-counts[present], kind="stable")]
    return [(int(label), counts[label] / labels.size) for label in order]


def draw_overlay(
    image: np.ndarray, labels: np.ndarray, palette: Palette, opacity: float = 0.5
) -> np.ndarray:
    """The image blended with its label colours, and a legend of the classes present.

    Args:
        image: ``H x W x 3`` uint8 RGB.
        labels: ``H x W`` class indices (train ids); values without a colour stay uncoloured.
        palette: Class names and colours.
        opacity: Weight of the label colours, from 0 (image only) to 1 (colours only).

    Returns:
        A new ``H x W x 3`` uint8 RGB array.
    """
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size.")
    if not 0.0 <= opacity <= 1.0:
        raise UsageError(f"opacity must be between 0 and 1, got {opacity}.")
    num_classes = len(palette.classes)
    colored = labels < num_classes
    colors = palette.colors[np.where(colored, labels, 0)].astype(np.float32)
    blended = image.astype(np.float32)
    blended[colored] = (1 - opacity) * blended[colored] + opacity * colors[colored]
    canvas = np.rint(blended).astype(np.uint8)
    _draw_legend(canvas, legend_entries(labels, num_classes), palette)
    return canvas


def _draw_legend(canvas: np.ndarray, entries: list[tuple[int, float]], palette: Palette) -> None:
    """Draws the legend into the top-left corner of ``canvas``, in columns if needed."""
    if not entries:
        return
    height, width = canvas.shape[:2]
    # Rows scale with the image: 14 px up to 280 px images, 36 px from 720 px (2048x1024).
    row = int(np.clip(round(min(height, width) / 20), 14, 36))
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = 0.55 * row / 22  # FONT_HERSHEY_SIMPLEX is about 22 px high at scale 1
    thickness = max(1, round(row / 20))
    pad = max(2, row // 6)
    texts = [
        f"{palette.classes[label]} {fraction:.0%}"
        if fraction >= 0.005
        else f"{palette.classes[label]} <1%"
        for label, fraction in entries
    ]
    text_width = max(cv2.getTextSize(text, font, scale, thickness)[0][0] for text in texts)
    column_width = row + pad + text_width + 2 * pad
    rows_per_column = max(1, (height - pad) // row)
    columns = -(-len(entries) // rows_per_column)
    box_width = min(width, columns * column_width + pad)
    box_height = min(height, min(len(entries), rows_per_column) * row + pad)
    # A darkened box behind the legend keeps it readable on any image.
    canvas[:box_height, :box_width] //= 3
    for index, ((label, _), text) in enumerate(zip(entries, texts)):
        x = pad + (index // rows_per_column) * column_width
        y = pad + (index % rows_per_column) * row
        color = tuple(int(c) for c in palette.colors[label])
        swatch = row - 2 * pad
        cv2.rectangle(canvas, (x, y + pad), (x + swatch, y + pad + swatch), color, cv2.FILLED)
        cv2.rectangle(canvas, (x, y + pad), (x + swatch, y + pad + swatch), (255, 255, 255), 1)
        baseline = y + row - pad - max(1, row // 8)
        cv2.putText(
            canvas, text, (x + row, baseline), font, scale, (255, 255, 255), thickness, cv2.LINE_AA
        )
