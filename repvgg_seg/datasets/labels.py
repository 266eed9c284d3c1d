"""Cityscapes label ids -> training ids, from the official ``cityscapesscripts`` label table.

Cityscapes ships ``*_gtFine_labelIds.png`` (34 label ids); mmseg trains on
``*_gtFine_labelTrainIds.png`` (19 classes, 255 ignored). The table is never retyped here:
it comes from ``cityscapesscripts.helpers.labels``.
"""

from __future__ import annotations

import logging
import os
from functools import cache

import numpy as np

from ..atomic_io import write_atomically
from ..errors import UsageError

IGNORE_INDEX = 255
logger = logging.getLogger(__name__)


@cache
def _label_table():
    try:
        from cityscapesscripts.helpers import labels
    except ImportError as error:
        raise ImportError(
            "The Cityscapes label table comes from the 'cityscapesscripts' package, which is "
            "not installed. Install it with `.venv/bin/pip install cityscapesscripts==2.2.4` "
            "(pinned in requirements/runtime.txt) or run `make setup`."
        ) from error
    return labels


def label_id(name: str) -> int:
    """The Cityscapes label id of a class name (``'road'`` -> 7)."""
    table = _label_table()
    if name not in table.name2label:
        raise UsageError(
            f"Unknown Cityscapes class {name!r}; valid names: {', '.join(table.name2label)}."
        )
    return table.name2label[name].id


@cache
def train_id_lookup() -> np.ndarray:
    """A 256-entry uint8 table mapping label ids to training ids (ignored classes: 255)."""
    lookup = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label in _label_table().labels:
        # 'license plate' has id -1 and never appears in *_labelIds.png.
        if 0 <= label.id < 256 and 0 <= label.trainId < IGNORE_INDEX:
            lookup[label.id] = label.trainId
    lookup.flags.writeable = False
    return lookup


@cache
def _known_label_ids() -> np.ndarray:
    """A 256-entry bool table: which values are label ids of the Cityscapes table."""
    known = np.zeros(256, dtype=bool)
    known[[label.id for label in _label_table().labels if 0 <= label.id < 256]] = True
    known.flags.writeable = False
    return known


def unknown_label_ids(label_ids: np.ndarray) -> dict[int, int]:
    """The values of a ``*_labelIds.png`` array that are no Cityscapes label id, with counts."""
    counts = np.bincount(label_ids.ravel(), minlength=256)
    unknown = np.flatnonzero((counts > 0) & ~_known_label_ids())
    return {int(value): int(counts[value]) for value in unknown}


def describe_counts(counts: dict[int, int]) -> str:
    """``34 (120 pixels), 200 (5 pixels)``."""
    return ", ".join(f"{value} ({count} pixels)" for value, count in sorted(counts.items()))


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Converts a ``*_labelIds.png`` array (uint8) into its ``*_labelTrainIds.png`` array.

    Values that are no Cityscapes label id become 255 (ignored), like the unlabeled classes.
    """
    if label_ids.dtype != np.uint8:
        raise ValueError(f"Cityscapes label ids must be uint8, got {label_ids.dtype}.")
    return train_id_lookup()[label_ids]


class UnknownLabelIdsError(UsageError):
    """A ``*_labelIds.png`` holds values that the Cityscapes label table does not define."""


LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"


def convert_label_ids_file(src: str, unknown_ids_to_ignore: bool = False) -> str:
    """Writes ``*_gtFine_labelTrainIds.png`` next to a ``*_gtFine_labelIds.png``.

    Args:
        src: The ``*_gtFine_labelIds.png`` file.
        unknown_ids_to_ignore: Map values that are no Cityscapes label id (0-33) to 255
            with a warning, instead of raising :class:`UnknownLabelIdsError`.

    Returns:
        The path written. The file appears atomically (temporary file, then rename).
    """
    import cv2

    label_ids = cv2.imread(src, cv2.IMREAD_UNCHANGED)
    if label_ids is None:
        raise UsageError(
            f"'{src}' cannot be decoded as an image (truncated or corrupt?); re-extract "
            "gtFine_trainvaltest.zip (see data/README.md)."
        )
    if label_ids.ndim != 2 or label_ids.dtype != np.uint8:
        raise UsageError(
            f"'{src}' is not a single-channel 8-bit Cityscapes label-id image (it has shape "
            f"{label_ids.shape}, {label_ids.dtype}); re-extract gtFine_trainvaltest.zip (see "
            "data/README.md)."
        )
    unknown = unknown_label_ids(label_ids)
    if unknown and not unknown_ids_to_ignore:
        raise UnknownLabelIdsError(
            f"'{src}' holds values that are no Cityscapes label id: {describe_counts(unknown)}. "
            "It is not an official *_gtFine_labelIds.png (re-extract gtFine_trainvaltest.zip), "
            "or pass --unknown-ids-to-ignore to map these values to 255 (ignored)."
        )
    if unknown:
        logger.warning("%s: mapped unknown label ids to 255: %s", src, describe_counts(unknown))
    dst = src[: -len(LABEL_IDS_SUFFIX)] + TRAIN_IDS_SUFFIX
    ok, encoded = cv2.imencode(".png", label_ids_to_train_ids(label_ids))
    if not ok:
        raise OSError(f"Could not encode the training labels of '{src}'.")
    write_atomically(dst, lambda file: file.write(encoded.tobytes()))
    return dst


def find_label_id_files(gtfine_dir: str) -> list[str]:
    """Every ``*_gtFine_labelIds.png`` under ``gtfine_dir``, sorted."""
    found = []
    for folder, _, files in os.walk(gtfine_dir):
        found += [os.path.join(folder, f) for f in files if f.endswith(LABEL_IDS_SUFFIX)]
    return sorted(found)
