"""Cityscapes with errors a user can act on.

mmseg's ``CityscapesDataset`` lists whatever matches its suffixes: a wrong ``data_root``
gives an empty dataset (and an obscure sampler error much later), an image without its
``*_labelTrainIds.png`` fails deep in a data-loader worker, and an unreadable file gives
``'NoneType' object has no attribute 'shape'``; a label with values outside the classes
fails in the loss as ``IndexError: Target 50 is out of bounds`` and a label of the wrong
size fails in a crop or the metric, neither naming the file. ``CheckedCityscapesDataset``
is the same dataset (same files, same pipeline, same metainfo) that checks the split when
it is built, checks every label as it is loaded (:class:`CheckSegLabels`), and names the
file when one cannot be read.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from mmcv.transforms import BaseTransform
from mmcv.transforms import LoadAnnotations as BaseLoadAnnotations
from mmseg.datasets import CityscapesDataset
from mmseg.registry import DATASETS, TRANSFORMS

from ..errors import UsageError

HELP = "See data/README.md for how to download and prepare Cityscapes."
MAX_LISTED = 5


class CityscapesDataError(UsageError):
    """The Cityscapes files on disk do not match what the config expects."""


def _listing(paths: list[str]) -> str:
    shown = "\n  ".join(paths[:MAX_LISTED])
    more = f"\n  ... and {len(paths) - MAX_LISTED} more" if len(paths) > MAX_LISTED else ""
    return f"\n  {shown}{more}\n"


def _stems(directory: str, suffix: str) -> dict[str, str]:
    """Maps ``<city>/<name>`` (suffix removed) to the file's path, for every file found."""
    found = {}
    for folder, _, files in os.walk(directory):
        for name in files:
            if name.endswith(suffix):
                path = os.path.join(folder, name)
                found[os.path.relpath(path, directory)[: -len(suffix)]] = path
    return found


def check_cityscapes_split(
    data_root: str | None,
    img_dir: str,
    seg_map_dir: str,
    img_suffix: str = "_leftImg8bit.png",
    seg_map_suffix: str = "_gtFine_labelTrainIds.png",
) -> int:
    """Checks one split of a Cityscapes copy before training or testing on it.

    Args:
        data_root: The config's ``data_root`` (only used in the messages), or None.
        img_dir: Folder of the split's images (``<root>/leftImg8bit/train``).
        seg_map_dir: Folder of the split's labels (``<root>/gtFine/train``).
        img_suffix: Image file suffix.
        seg_map_suffix: Label file suffix.

    Returns:
        The number of image/label pairs.

    Raises:
        CityscapesDataError: The root or split is missing, the split has no images, or some
            images have no label file (or some labels no image).
    """
    if data_root and not os.path.isdir(data_root):
        raise CityscapesDataError(
            f"Cityscapes data root '{data_root}' does not exist (working directory: "
            f"{Path.cwd()}). Put the dataset there, set data_root with --cfg-options, or use "
            f"tools/make_synthetic_cityscapes.py for synthetic data. {HELP}"
        )
    if not os.path.isdir(img_dir):
        raise CityscapesDataError(
            f"The image folder '{img_dir}' does not exist; unpack leftImg8bit_trainvaltest.zip "
            f"into the data root. {HELP}"
        )
    images = _stems(img_dir, img_suffix)
    if not images:
        raise CityscapesDataError(f"No '*{img_suffix}' images found under '{img_dir}'. {HELP}")
    if not os.path.isdir(seg_map_dir):
        raise CityscapesDataError(
            f"The label folder '{seg_map_dir}' does not exist; unpack gtFine_trainvaltest.zip "
            f"into the data root and run tools/prepare_cityscapes.py. {HELP}"
        )
    labels = _stems(seg_map_dir, seg_map_suffix)
    unlabelled = sorted(images[s] for s in images.keys() - labels.keys())
    if unlabelled:
        raise CityscapesDataError(
            f"{len(unlabelled)} of {len(images)} images under '{img_dir}' have no "
            f"'*{seg_map_suffix}' label under '{seg_map_dir}':{_listing(unlabelled)}"
            "If the gtFine *_labelIds.png files are there, create the training labels with "
            f"`python tools/prepare_cityscapes.py <data_root>`. {HELP}"
        )
    orphans = sorted(labels[s] for s in labels.keys() - images.keys())
    if orphans:
        raise CityscapesDataError(
            f"{len(orphans)} labels under '{seg_map_dir}' have no '*{img_suffix}' image "
            f"under '{img_dir}':{_listing(orphans)}The image archive is incomplete or the "
            f"two archives are from different splits. {HELP}"
        )
    return len(images)


def unreadable_reason(path: str) -> str | None:
    """Why the image at ``path`` cannot be decoded, or None when it can."""
    if not os.path.isfile(path):
        return "the file does not exist"
    if os.path.getsize(path) == 0:
        return "the file is empty"
    if cv2.imread(path, cv2.IMREAD_UNCHANGED) is None:
        return "it is not a readable image (truncated or corrupt download?)"
    return None


def _size(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}"


@TRANSFORMS.register_module()
class CheckSegLabels(BaseTransform):
    """Checks a label map just loaded: the size of its image, values within the classes.

    Place it right after ``LoadAnnotations`` (:class:`CheckedCityscapesDataset` does so
    itself). Costs one ``np.bincount`` per label.

    Args:
        num_classes: Labels hold ``0 .. num_classes - 1`` ...
        ignore_index: ... or this value.

    Raises:
        CityscapesDataError: The label is not a single-channel map of its image's size, or
            holds other values; the message names the label file.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes <= 0:
            raise UsageError(f"num_classes must be positive, got {num_classes}.")
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def transform(self, results: dict) -> dict:
        labels = results["gt_seg_map"]
        path = results.get("seg_map_path", "the label")
        image_shape = results.get("ori_shape")
        if labels.ndim != 2:
            raise CityscapesDataError(
                f"Label '{path}' has shape {labels.shape}; expected a single-channel image of "
                f"training ids (a *_labelTrainIds.png, not a colour image). Recreate it with "
                f"tools/prepare_cityscapes.py. {HELP}"
            )
        if image_shape is not None and labels.shape != tuple(image_shape[:2]):
            raise CityscapesDataError(
                f"Label '{path}' is {_size(labels.shape)} pixels but its image "
                f"'{results.get('img_path')}' is {_size(image_shape)}; a label must have its "
                f"image's size. Replace the label (or the image) with the matching file. {HELP}"
            )
        counts = np.bincount(labels.ravel(), minlength=self.num_classes)
        counts[: self.num_classes] = 0
        if 0 <= self.ignore_index < counts.size:
            counts[self.ignore_index] = 0
        bad = np.flatnonzero(counts)
        if bad.size:
            found = ", ".join(f"{value} ({counts[value]} pixels)" for value in bad)
            raise CityscapesDataError(
                f"Label '{path}' holds values outside the {self.num_classes} training ids "
                f"(0-{self.num_classes - 1}) and the ignore index {self.ignore_index}: {found}. "
                "Is it a *_labelIds.png (raw Cityscapes ids) saved under the train-id name? "
                f"Recreate it with `python tools/prepare_cityscapes.py <data_root>`. {HELP}"
            )
        return results

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_classes={self.num_classes}, "
            f"ignore_index={self.ignore_index})"
        )


@DATASETS.register_module()
class CheckedCityscapesDataset(CityscapesDataset):
    """mmseg's ``CityscapesDataset`` with clear errors for missing or broken files.

    Takes the same arguments. The split is checked when the file list is loaded
    (:func:`check_cityscapes_split`); :class:`CheckSegLabels` is inserted after each
    ``LoadAnnotations`` of the pipeline; a sample whose image or label cannot be decoded
    raises :class:`CityscapesDataError` naming the file.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        transforms = self.pipeline.transforms
        for index in reversed(range(len(transforms))):
            following = transforms[index + 1] if index + 1 < len(transforms) else None
            if isinstance(transforms[index], BaseLoadAnnotations) and not isinstance(
                following, CheckSegLabels
            ):
                check = CheckSegLabels(len(self.metainfo["classes"]), self.ignore_index)
                transforms.insert(index + 1, check)

    def load_data_list(self) -> list[dict]:
        if not self.ann_file:
            check_cityscapes_split(
                self.data_root,
                self.data_prefix.get("img_path", ""),
                self.data_prefix.get("seg_map_path", ""),
                self.img_suffix,
                self.seg_map_suffix,
            )
        return super().load_data_list()

    def prepare_data(self, idx: int):
        try:
            return super().prepare_data(idx)
        except Exception as error:
            # Only diagnosed after a failure: decoding every file up front would cost
            # minutes on the real dataset.
            info = self.get_data_info(idx)
            for key in ("img_path", "seg_map_path"):
                path = info.get(key)
                reason = path and unreadable_reason(path)
                if reason:
                    raise CityscapesDataError(
                        f"Cannot read {key} '{path}': {reason}. Replace the file (re-extract "
                        f"the archive) or remove it together with its pair. {HELP}"
                    ) from error
            raise
