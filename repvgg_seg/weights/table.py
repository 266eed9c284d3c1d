"""The published ImageNet RepVGG checkpoints that ``checkpoint='repvgg:NAME'`` refers to.

All entries are mmpretrain's re-trained releases (keys ``backbone.stem.branch_3x3...``);
their file names end in the first 8 hex digits of the file's sha256, which downloads are
checked against. ``paper_top1`` is the paper's ImageNet top-1 for the recipe the file was
trained with: Table 4 (120 epochs, simple augmentation) for most files, Table 5 (200 epochs,
AutoAugment, label smoothing, mixup) for B2g4, B3 and B3g4, whose published files are the
200-epoch models. It is not mmpretrain's own measurement of its file: see mmpretrain's model
zoo for that.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import UsageError
from ..models.arch import ModelName

DEFAULT_BASE_URL = "https://download.openmmlab.com/mmclassification/v0/repvgg/"

# Tests and mirrors point name look-ups elsewhere with this variable.
BASE_URL_ENV = "REPVGG_SEG_WEIGHTS_BASE_URL"

NAME_SCHEME = "repvgg:"


@dataclass(frozen=True)
class PublishedWeights:
    """One published checkpoint.

    Attributes:
        arch: Canonical variant name (``'B1g2'``).
        filename: File name under the base URL.
        sha256_prefix: Leading hex digits of the file's sha256.
        paper_top1: The paper's ImageNet top-1 (%) of the model this file is (Table 4 or 5,
            see ``paper_epochs``), None where the paper reports none.
        paper_epochs: The paper's schedule for that figure: 120 (Table 4) or 200 (Table 5).
    """

    arch: str
    filename: str
    sha256_prefix: str
    paper_top1: float | None = None
    paper_epochs: int = 120

    @property
    def url(self) -> str:
        """Download URL under the current base URL (:func:`base_url`)."""
        return base_url() + self.filename


def _mmpretrain(
    arch: str, sha256_prefix: str, paper_top1: float | None, paper_epochs: int = 120
) -> PublishedWeights:
    filename = f"repvgg-{arch}_8xb32_in1k_20221213-{sha256_prefix}.pth"
    return PublishedWeights(arch, filename, sha256_prefix, paper_top1, paper_epochs)


WEIGHTS: dict[str, PublishedWeights] = {
    entry.arch: entry
    for entry in (
        _mmpretrain("A0", "60ae8e23", 72.41),
        _mmpretrain("A1", "f81bf3df", 74.46),
        _mmpretrain("A2", "a8767caf", 76.48),
        _mmpretrain("B0", "5091ecc7", 75.14),
        _mmpretrain("B1", "d17c45e7", 78.37),
        _mmpretrain("B1g2", "ae6428fd", 77.78),
        _mmpretrain("B1g4", "a7a4aaea", 77.58),
        _mmpretrain("B2", "d8b420ef", 78.78),
        # The published B2g4, B3 and B3g4 files are the 200-epoch models of Table 5 (B2g4's
        # 120-epoch figure in Table 4 is 78.50).
        _mmpretrain("B2g4", "0c1990eb", 79.38, paper_epochs=200),
        _mmpretrain("B3", "927a329a", 80.52, paper_epochs=200),
        _mmpretrain("B3g4", "e01cb280", 80.21, paper_epochs=200),
    )
}


def base_url() -> str:
    """The URL the table's file names are joined to: ``$REPVGG_SEG_WEIGHTS_BASE_URL`` or
    :data:`DEFAULT_BASE_URL`, always ending in ``/``."""
    url = os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    return url if url.endswith("/") else url + "/"


def published_weights(name: str) -> PublishedWeights:
    """The table entry of a variant name (``'B2'``, ``'RepVGG-B2'``, ``'repvgg:B2'``).

    Raises:
        ValueError: ``name`` is no variant, or a variant without published weights; the
            message lists the variants that have them.
    """
    if name.startswith(NAME_SCHEME):
        name = name[len(NAME_SCHEME) :]
    model = ModelName.parse(name)
    if model.block_type != "RepVGG":
        raise UsageError(
            f"No published ImageNet weights for {model}: none exist for {model.block_type}. "
            f"Pretrain them with tools/pretrain_imagenet.py --model {model} and pass the "
            "checkpoint's path."
        )
    arch = model.arch
    if arch not in WEIGHTS:
        raise UsageError(
            f"No published ImageNet weights for RepVGG-{arch}; published variants are "
            f"{', '.join(WEIGHTS)}. Pretrain it yourself or pass a local checkpoint path."
        )
    return WEIGHTS[arch]


def find_by_filename(filename: str) -> PublishedWeights | None:
    """The table entry whose file is called ``filename``, if any."""
    return next((entry for entry in WEIGHTS.values() if entry.filename == filename), None)
