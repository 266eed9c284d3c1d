"""Loading any RepVGG checkpoint into a backbone, and converting checkpoint files.

A backbone whose ``init_cfg`` is ``Pretrained`` builds :class:`RepVGGPretrainedInit` from
mmengine's ``WEIGHT_INITIALIZERS`` registry and calls it on itself (the backbone never
imports this module), which runs :func:`load_pretrained_backbone` on that instance.
``tools/convert_checkpoint.py`` calls :func:`convert_checkpoint_file`.
:func:`load_classifier` loads a whole classifier (head included) from a pretraining file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from mmengine.registry import WEIGHT_INITIALIZERS

from ..atomic_io import save_atomically
from ..checkpoint import CheckpointError, describe_key_mismatch, read_checkpoint, state_dict_of
from ..models.arch import RepVGGArch
from ..models.backbone import PRETRAINED_INITIALIZER, RepVGG
from ..models.classifier import RepVGGClassifier
from .download import resolve_checkpoint
from .formats import (
    ConvertedCheckpoint,
    Structure,
    convert_state_dict,
    infer_block_type,
    infer_structure,
)

logger = logging.getLogger(__name__)


@WEIGHT_INITIALIZERS.register_module(name=PRETRAINED_INITIALIZER)
class RepVGGPretrainedInit:
    """The mmengine weight initializer behind a RepVGG backbone's ``Pretrained`` init_cfg.

    Args:
        checkpoint: ``'repvgg:B2'``, an http(s) URL, or a local path.
        prefix: See :func:`load_pretrained_backbone`.
    """

    def __init__(self, checkpoint: str | os.PathLike, prefix: str | None = None) -> None:
        self.checkpoint = checkpoint
        self.prefix = prefix

    def __call__(self, backbone: RepVGG) -> None:
        load_pretrained_backbone(backbone, self.checkpoint, self.prefix)


def load_pretrained_backbone(
    backbone: RepVGG,
    checkpoint: str | os.PathLike,
    prefix: str | None = None,
    progress: bool = True,
) -> ConvertedCheckpoint:
    """Initializes ``backbone`` from any RepVGG checkpoint, strictly.

    Args:
        backbone: The backbone to load into.
        checkpoint: ``'repvgg:B2'``, an http(s) URL, or a local path (see
            :func:`repvgg_seg.weights.resolve_checkpoint`).
        prefix: Only keys under this prefix are the backbone's (None: ``backbone.`` when
            present, else all).
        progress: Show download progress.

    Returns:
        The converted checkpoint (format, dropped head keys, ...).

    Raises:
        CheckpointError: Wrong variant, fused weights for a training-time backbone, or keys
            missing, unexpected or of the wrong shape.
    """
    source = os.fspath(checkpoint)
    path = resolve_checkpoint(checkpoint, progress=progress)
    converted = convert_state_dict(read_checkpoint(path), source, prefix)
    backbone.load_state_dict(backbone_state_dict(converted, backbone, source), strict=True)
    logger.info(
        "Loaded %s weights (%s format, %s) from %s; left out %d head keys.",
        backbone.model_name,
        converted.format,
        "fused" if converted.deployed else "training-time",
        path,
        len(converted.dropped),
    )
    return converted


def load_classifier(path: str | os.PathLike) -> RepVGGClassifier:
    """The classifier a ``tools/pretrain_imagenet.py`` file holds, head included, in eval mode.

    Any of its files: ``checkpoint.pth``, ``model_best.pth`` (training-time) or
    ``model_deploy.pth`` (fused); the model name and class count come from the file.

    Raises:
        CheckpointError: Not a pretraining file, or its weights do not fit its model name.
    """
    source = os.fspath(path)
    checkpoint = read_checkpoint(source)
    state = state_dict_of(checkpoint, source)
    name = checkpoint.get("arch") or checkpoint.get("args", {}).get("model")
    if name is None or "fc.weight" not in state:
        raise CheckpointError(
            f"Checkpoint {source!r} is not a classifier written by tools/pretrain_imagenet.py "
            "(no model name or no 'fc.weight'); pass its checkpoint.pth, model_best.pth or "
            "model_deploy.pth."
        )
    deploy = bool(checkpoint.get("deploy", False))
    with torch.device("meta"):
        model = RepVGGClassifier.from_model_name(
            name, num_classes=state["fc.weight"].shape[0], deploy=deploy
        )
    problems = describe_key_mismatch(model.state_dict(), state)
    if problems:
        raise CheckpointError(f"Checkpoint {source!r} does not fit {name}: {problems}.")
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def backbone_structure(backbone: RepVGG) -> Structure:
    """The :class:`Structure` a backbone's weights must have."""
    return Structure.of_arch(backbone.arch, backbone.stem.in_channels)


def check_backbone_structure(
    state: Mapping[str, torch.Tensor], deployed: bool, backbone: RepVGG, source: str
) -> Structure:
    """Raises unless ``state`` (our keys) has the backbone's variant; returns its structure.

    Training-time weights of the other block type are an error only for a training-time
    backbone: fused, both block types are the same network.

    Raises:
        CheckpointError: The weights are of another variant or block type; the message names
            both and the ``arch`` or ``block_type`` to set instead.
    """
    expected = backbone_structure(backbone)
    found = infer_structure(state, deployed)
    if found is not None and found != expected:
        hint = f"arch='{found.arch_name}'" if found.arch_name else "the matching arch"
        raise CheckpointError(
            f"Checkpoint {source} holds {found.describe()} weights, but the backbone is "
            f"{expected.describe()}. Set {hint} in the backbone config to use these weights, "
            f"or use a checkpoint of the backbone's variant."
        )
    block_type = infer_block_type(state, deployed)
    if block_type not in (None, backbone.block_type) and not backbone.deploy:
        raise CheckpointError(
            f"Checkpoint {source} holds training-time {block_type} blocks, but the backbone "
            f"is built of {backbone.block_type} blocks. Set block_type='{block_type}' in the "
            "backbone config (or deploy=True: fused, both are the same network)."
        )
    return expected


def backbone_state_dict(
    converted: ConvertedCheckpoint, backbone: RepVGG, source: str
) -> dict[str, torch.Tensor]:
    """The state dict that loads strictly into ``backbone``, checked key by key.

    A training-time checkpoint for a deployed backbone is fused here (exactly, with the
    backbone's BN eps); a fused checkpoint for a training-time backbone is an error, as it
    cannot be split back into branches.
    """
    expected = check_backbone_structure(converted.state_dict, converted.deployed, backbone, source)
    state = converted.state_dict
    if converted.deployed and not backbone.deploy:
        raise CheckpointError(
            f"Checkpoint {source} is deployed (fused; {converted.format} format), but the "
            f"{backbone.model_name} backbone has deploy=False. Build the backbone with "
            "deploy=True to load it; fused weights cannot be split back into the three "
            "training-time branches."
        )
    if backbone.deploy and not converted.deployed:
        logger.info("Fusing the training-time checkpoint %s for a deployed backbone.", source)
        # Fusion folds BN with its eps, so it uses the backbone's; SyncBN folds like BN.
        norm_cfg = {**backbone.norm_cfg, "type": "BN"}
        block_type = infer_block_type(state, deployed=False)
        state = fuse_state_dict(
            state, backbone.arch, expected.in_channels, norm_cfg, source, block_type
        )
    return _checked_against(state, backbone, f"{source} ({converted.format} format)")


def _checked_against(
    state: Mapping[str, torch.Tensor], model: RepVGG, source: str
) -> dict[str, torch.Tensor]:
    """``state`` with BN step counters filled in; raises unless it loads strictly."""
    model_state = model.state_dict()
    state = dict(state)
    for key, value in model_state.items():
        # Some exports drop BN step counters; they do not affect any output.
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros(value.shape, dtype=value.dtype)
    problems = describe_key_mismatch(model_state, state)
    if problems:
        raise CheckpointError(
            f"Checkpoint {source} does not match the {model.model_name} backbone (keys "
            f"as renamed to ours): {problems}. The file is incomplete or from a different "
            "model; every backbone weight must be present."
        )
    return state


def fuse_state_dict(
    state: Mapping[str, torch.Tensor],
    arch: str | RepVGGArch,
    in_channels: int = 3,
    norm_cfg: dict | None = None,
    source: str = "state dict",
    block_type: str = "RepVGG",
) -> dict[str, torch.Tensor]:
    """Fuses a training-time backbone state dict (our keys) into deployed weights.

    Args:
        state: Training-time backbone state dict with our keys.
        arch: Its variant.
        in_channels: Its input channels.
        norm_cfg: Norm config whose ``eps`` the fusion uses (default BN: 1e-5).
        source: Name of the weights for error messages.
        block_type: Its blocks' type (``'RepVGG'`` or ``'QARepVGG'``).
    """
    # Built on the meta device: its random initialization would be overwritten anyway.
    with torch.device("meta"):
        model = RepVGG(arch, in_channels=in_channels, norm_cfg=norm_cfg, block_type=block_type)
    model.load_state_dict(_checked_against(state, model, source), strict=True, assign=True)
    model.eval()
    model.switch_to_deploy()
    return {key: value.detach() for key, value in model.state_dict().items()}


def convert_checkpoint(
    checkpoint: str | os.PathLike,
    arch: str | None = None,
    deploy: bool | None = None,
    progress: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Any RepVGG checkpoint as a state dict that loads strictly into ``RepVGG``.

    Args:
        checkpoint: ``'repvgg:B2'``, an http(s) URL, or a local path.
        arch: Expected variant; None takes the one the weights have.
        deploy: Fuse the weights (True) or keep them as they are (None). False for a fused
            checkpoint is an error.
        progress: Show download progress.

    Returns:
        ``(state_dict, meta)``: the backbone state dict, and ``meta`` with ``arch``,
        ``block_type`` (of training-time weights; fused ones are the same for both),
        ``deploy``, ``source`` and ``source_format``.
    """
    source = os.fspath(checkpoint)
    converted = convert_state_dict(
        read_checkpoint(resolve_checkpoint(checkpoint, progress)), source
    )
    found = infer_structure(converted.state_dict, converted.deployed)
    if arch is None:
        if found is None or found.arch_name is None:
            raise CheckpointError(
                f"Cannot tell the RepVGG variant of {source} from its weights; pass arch= "
                "(--arch in tools/convert_checkpoint.py)."
            )
        arch = found.arch_name
    deploy = converted.deployed if deploy is None else deploy
    in_channels = found.in_channels if found is not None else 3
    block_type = infer_block_type(converted.state_dict, converted.deployed) or "RepVGG"
    # The meta device skips allocating and initializing weights that are replaced anyway.
    with torch.device("meta"):
        backbone = RepVGG(arch, in_channels=in_channels, deploy=deploy, block_type=block_type)
    state = backbone_state_dict(converted, backbone, source)
    backbone.load_state_dict(state, strict=True, assign=True)
    meta = {
        "arch": backbone.arch_name,
        "block_type": block_type,
        "deploy": deploy,
        "source": source,
        "source_format": converted.format,
    }
    return {key: value.detach() for key, value in backbone.state_dict().items()}, meta


def convert_checkpoint_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    arch: str | None = None,
    deploy: bool | None = None,
    wrap: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Converts ``src`` (see :func:`convert_checkpoint`) and writes it to ``dst`` atomically.

    Args:
        src: ``'repvgg:B2'``, an http(s) URL, or a local path.
        dst: Output file; written to a temporary file beside it, then renamed.
        arch: Expected variant (None: inferred).
        deploy: True fuses a training-time checkpoint; None keeps it as it is.
        wrap: Save ``{'state_dict': ..., 'meta': ...}`` (mmengine's layout) instead of the
            bare state dict.
        progress: Show download progress.

    Returns:
        The ``meta`` dict (arch, deploy, source, source_format).
    """
    state, meta = convert_checkpoint(src, arch=arch, deploy=deploy, progress=progress)
    save_atomically({"state_dict": state, "meta": meta} if wrap else state, Path(dst))
    logger.info(
        "Wrote %s-%s (%s) backbone weights from %s (%s format) to %s",
        meta["block_type"],
        meta["arch"],
        "deployed" if meta["deploy"] else "training-time",
        src,
        meta["source_format"],
        dst,
    )
    return meta
