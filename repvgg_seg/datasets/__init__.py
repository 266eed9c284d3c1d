"""Cityscapes for repvgg_seg: a dataset with clear data errors and a synthetic generator.

Importing it registers ``CheckedCityscapesDataset`` in mmseg's ``DATASETS`` and semseg's
``RandomGaussianBlur`` and ``PadAndRandomCrop`` in its ``TRANSFORMS``.
"""

from .cityscapes import (
    CheckedCityscapesDataset,
    CityscapesDataError,
    check_cityscapes_split,
    unreadable_reason,
)
from .labels import label_id, label_ids_to_train_ids, train_id_lookup
from .synthetic import make_synthetic_cityscapes
from .transforms import PadAndRandomCrop, RandomGaussianBlur

__all__ = [
    "CheckedCityscapesDataset",
    "CityscapesDataError",
    "PadAndRandomCrop",
    "RandomGaussianBlur",
    "check_cityscapes_split",
    "label_id",
    "label_ids_to_train_ids",
    "make_synthetic_cityscapes",
    "train_id_lookup",
    "unreadable_reason",
]
