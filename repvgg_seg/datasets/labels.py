"""Cityscapes label ids -> training ids, from the official ``cityscapesscripts`` label table.

Cityscapes ships ``*_gtFine_labelIds.png`` (34 label ids); mmseg trains on
``*_gtFine_labelTrainIds.png`` (19 classes, 255 ignored). The table is never retyped here:
it comes from ``cityscapesscripts.helpers.labels``.
"""

from __future__ import annotations

import os
from functools import cache

import numpy as np

from ..atomic_io import write_atomically

IGNORE_INDEX = 255


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
        raise ValueError(
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


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Converts a ``*_labelIds.png`` array (uint8) into its ``*_labelTrainIds.png`` array."""
    if label_ids.dtype != np.uint8:
        raise ValueError(f"Cityscapes label ids must be uint8, got {label_ids.dtype}.")
    return train_id_lookup()[label_ids]


LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"


def convert_label_ids_file(src: str) -> str:
    """Writes ``*_gtFine_labelTrainIds.png`` next to a ``*_gtFine_labelIds.png``.

    Returns:
        The path written. The file appears atomically (temporary file, then rename).
    """
    import cv2

    label_ids = cv2.imread(src, cv2.IMREAD_UNCHANGED)
    if label_ids is None or label_ids.ndim != 2 or label_ids.dtype != np.uint8:
        raise ValueError(
            f"'{src}' is not a single-channel 8-bit Cityscapes label-id image; re-extract "
            "gtFine_trainvaltest.zip (see data/README.md)."
        )
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
