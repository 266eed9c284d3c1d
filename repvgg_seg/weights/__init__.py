"""Pretrained RepVGG weights: where they come from and how they load into the backbone.

A config asks for weights in one of three ways, all through mmengine's ``init_cfg``::

    backbone=dict(type='RepVGG', arch='B2',
                  init_cfg=dict(type='Pretrained', checkpoint='repvgg:B2'))  # published
    init_cfg=dict(type='Pretrained', checkpoint='https://.../file.pth')        # any URL
    init_cfg=dict(type='Pretrained', checkpoint='/path/to/file.pth')           # local file

Any RepVGG format loads (official, mmpretrain, timm, ours; training-time or fused); see
:mod:`.formats`. Downloads are cached and verified (:mod:`.download`). Files are read by
:func:`repvgg_seg.checkpoint.read_checkpoint`, like everywhere in the package.

This package sits above :mod:`repvgg_seg.models`: it imports the backbone, never the
reverse (the backbone reaches :class:`.loading.RepVGGPretrainedInit` through mmengine's
``WEIGHT_INITIALIZERS`` registry).
"""

from ..atomic_io import save_atomically
from ..checkpoint import CheckpointError
from .download import (
    OFFLINE_ENV,
    ChecksumError,
    cache_dir,
    cached_download,
    offline_mode,
    resolve_checkpoint,
)
from .formats import (
    FORMATS,
    CheckpointFormat,
    ConvertedCheckpoint,
    Structure,
    convert_state_dict,
    detect_format,
    infer_structure,
)
from .loading import (
    RepVGGPretrainedInit,
    backbone_state_dict,
    check_backbone_structure,
    convert_checkpoint,
    convert_checkpoint_file,
    fuse_state_dict,
    load_classifier,
    load_pretrained_backbone,
)
from .table import BASE_URL_ENV, DEFAULT_BASE_URL, WEIGHTS, PublishedWeights, published_weights

__all__ = [
    "BASE_URL_ENV",
    "DEFAULT_BASE_URL",
    "FORMATS",
    "OFFLINE_ENV",
    "WEIGHTS",
    "CheckpointError",
    "CheckpointFormat",
    "ChecksumError",
    "ConvertedCheckpoint",
    "PublishedWeights",
    "RepVGGPretrainedInit",
    "Structure",
    "backbone_state_dict",
    "cache_dir",
    "cached_download",
    "check_backbone_structure",
    "convert_checkpoint",
    "convert_checkpoint_file",
    "convert_state_dict",
    "detect_format",
    "fuse_state_dict",
    "infer_structure",
    "load_classifier",
    "load_pretrained_backbone",
    "offline_mode",
    "published_weights",
    "resolve_checkpoint",
    "save_atomically",
]
