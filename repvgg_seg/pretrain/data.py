"""ImageNet-style data: an ImageFolder root with ``train/`` and ``val/``, loaders.

The transforms are in :mod:`.transforms`; mixup acts on whole batches (:class:`MixupCollate`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.dataloader import default_collate
from torch.utils.data.distributed import DistributedSampler
from torchvision import datasets, transforms
from torchvision.transforms import v2

from ..errors import UsageError
from .transforms import (
    AUTO_AUGMENT_POLICIES,
    CROP_AND_FLIP,
    Augmentation,
    train_transform,
    val_transform,
)

logger = logging.getLogger(__name__)

# Re-exported: tools/pretrain_imagenet.py offers these as --auto-augment choices.
__all__ = [
    "AUTO_AUGMENT_POLICIES",
    "Augmentation",
    "ImageNetSplits",
    "MixupCollate",
    "ShardSampler",
    "build_datasets",
    "build_loaders",
    "load_rgb_image",
]


def load_rgb_image(path: str) -> Image.Image:
    """Opens an image as RGB, naming the file if it cannot be read.

    Raises:
        UsageError: The file is missing, truncated, or not an image.
    """
    try:
        with open(path, "rb") as file:
            image = Image.open(file)
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:
        raise UsageError(
            f"Cannot read image {path}: {error}. Replace the file with a valid image or delete "
            "it from the dataset."
        ) from error


def _image_folder(root: Path, transform: transforms.Compose) -> datasets.ImageFolder:
    if not root.is_dir():
        raise FileNotFoundError(
            f"Dataset split folder {root} does not exist. --data-path must be an ImageFolder "
            "root containing train/ and val/, each with one sub-folder of images per class."
        )
    class_dirs = sorted(entry for entry in root.iterdir() if entry.is_dir())
    if not class_dirs:
        raise FileNotFoundError(
            f"{root} has no class sub-folders; put each class's images in {root}/<class_name>/."
        )
    extensions = datasets.folder.IMG_EXTENSIONS
    empty = [
        d.name
        for d in class_dirs
        if not any(f.suffix.lower() in extensions for f in d.rglob("*") if f.is_file())
    ]
    if empty:
        shown = ", ".join(empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
        raise FileNotFoundError(
            f"Class folders without images in {root}: {shown}. Every class needs at least one "
            f"image with an extension in {', '.join(extensions)}; remove empty folders."
        )
    return datasets.ImageFolder(str(root), transform=transform, loader=load_rgb_image)


@dataclass
class ImageNetSplits:
    """The two ImageFolder datasets of a root, with the same class list."""

    train: datasets.ImageFolder
    val: datasets.ImageFolder

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)


def build_datasets(
    data_path: str | Path,
    train_crop_size: int,
    val_resize_size: int,
    val_crop_size: int,
    augmentation: Augmentation = CROP_AND_FLIP,
) -> ImageNetSplits:
    """Loads ``data_path/train`` and ``data_path/val`` and checks that their classes agree.

    Raises:
        FileNotFoundError: A split or class folder is missing or empty.
        UsageError: ``train/`` and ``val/`` have different class folders, or an option of
            ``augmentation`` is out of range.
    """
    root = Path(data_path)
    if not root.is_dir():
        raise FileNotFoundError(f"--data-path {root} does not exist or is not a folder.")
    train = _image_folder(root / "train", train_transform(train_crop_size, augmentation))
    interpolation = augmentation.interpolation
    val = _image_folder(root / "val", val_transform(val_resize_size, val_crop_size, interpolation))
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))[:10]
        only_val = sorted(set(val.classes) - set(train.classes))[:10]
        raise UsageError(
            f"{root}/train and {root}/val must have the same class folders (labels are their "
            f"sorted order); only in train: {only_train}, only in val: {only_val}."
        )
    logger.info(
        "Data %s: %d classes, %d train and %d val images",
        root,
        len(train.classes),
        len(train),
        len(val),
    )
    return ImageNetSplits(train, val)


class MixupCollate:
    """Collates a batch, then mixes it (labels become ``(N, num_classes)`` probabilities).

    A class rather than a closure so DataLoader workers can pickle it.
    """

    def __init__(self, alpha: float, num_classes: int) -> None:
        self.mixup = v2.MixUp(alpha=alpha, num_classes=num_classes)

    def __call__(self, batch: list) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mixup(*default_collate(batch))


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``, unpadded.

    ``DistributedSampler`` pads the last shard with repeated images, which would count some
    validation images twice; evaluation reduces exact counts instead.
    """

    def __init__(self, dataset: Dataset, world_size: int, rank: int) -> None:
        self.indices = range(rank, len(dataset), world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_loaders(
    splits: ImageNetSplits,
    batch_size: int,
    workers: int,
    world_size: int,
    rank: int,
    seed: int,
    mixup_alpha: float = 0.0,
    pin_memory: bool = False,
) -> tuple[DataLoader, DataLoader, DistributedSampler]:
    """Train and val loaders for one process, plus the train sampler (call ``set_epoch``).

    The training sampler shuffles with ``seed + epoch``, identically on every process, so the
    data order of an epoch does not depend on how the run got there (fresh or resumed).
    Training drops the last incomplete batch: every step has the full global batch the LR
    was scaled for.

    Raises:
        UsageError: The training set has fewer images than one global batch.
    """
    if len(splits.train) < batch_size * world_size:
        raise UsageError(
            f"The training set has {len(splits.train)} images, fewer than one global batch "
            f"({batch_size} x {world_size} processes); lower --batch-size."
        )
    train_sampler = DistributedSampler(
        splits.train, num_replicas=world_size, rank=rank, shuffle=True, seed=seed
    )
    collate = MixupCollate(mixup_alpha, splits.num_classes) if mixup_alpha > 0 else None
    train_loader = DataLoader(
        splits.train,
        batch_size=batch_size,
        sampler=train_sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=True,
        collate_fn=collate,
    )
    val_loader = DataLoader(
        splits.val,
        batch_size=batch_size,
        sampler=ShardSampler(splits.val, world_size, rank),
        num_workers=workers,
        pin_memory=pin_memory,
    )
    return train_loader, val_loader, train_sampler
