"""Loading any RepVGG checkpoint into the backbone, and converting checkpoint files.

The backbone's ``init_weights`` calls :func:`pretrained_source` and
:func:`load_pretrained_backbone`; ``tools/convert_checkpoint.py`` calls
:func:`convert_checkpoint_file`.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..atomic_io import save_atomically
from ..models.arch import RepVGGArch
from ..models.backbone import RepVGG
from .download import resolve_checkpoint
from .formats import (
    CheckpointError,
    ConvertedCheckpoint,
    Structure,
    convert_state_dict,
    infer_structure,
)

logger = logging.getLogger(__name__)


def pretrained_source(init_cfg: Any) -> dict | None:
    """The keyword arguments of :func:`load_pretrained_backbone` that a ``Pretrained``
    init_cfg asks for (``checkpoint``, ``prefix``), or None when it asks for none.

    ``init_cfg`` may be one dict or a list of them, as mmengine allows.
    """
    cfgs = init_cfg if isinstance(init_cfg, list | tuple) else [init_cfg]
    for cfg in cfgs:
        if isinstance(cfg, Mapping) and cfg.get("type") == "Pretrained":
            if not cfg.get("checkpoint"):
                raise ValueError(
                    "init_cfg type='Pretrained' needs checkpoint=: 'repvgg:B2' (published "
                    "ImageNet weights), an http(s) URL, or a local path."
                )
            return {"checkpoint": cfg["checkpoint"], "prefix": cfg.get("prefix")}
    return None


def read_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load`` with ``weights_only=True``, with errors that name the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} holds Python objects that are not loaded for safety (weights_only=True): "
            f"{error}. If you trust the file, re-save only its tensors, e.g. "
            "torch.save({'state_dict': model.state_dict()}, 'clean.pth')."
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({error}); it may be truncated or "
            "corrupt. Delete it and download or copy it again."
        ) from error


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
        "Loaded RepVGG-%s weights (%s format, %s) from %s; left out %d head keys.",
        backbone.arch_name,
        converted.format,
        "fused" if converted.deployed else "training-time",
        path,
        len(converted.dropped),
    )
    return converted


def backbone_structure(backbone: RepVGG) -> Structure:
    """The :class:`Structure` a backbone's weights must have."""
    return Structure.of_arch(backbone.arch, backbone.stem.in_channels)


def backbone_state_dict(
    converted: ConvertedCheckpoint, backbone: RepVGG, source: str
) -> dict[str, torch.Tensor]:
    """The state dict that loads strictly into ``backbone``, checked key by key.

    A training-time checkpoint for a deployed backbone is fused here (exactly, with the
    backbone's BN eps); a fused checkpoint for a training-time backbone is an error, as it
    cannot be split back into branches.
    """
    expected = backbone_structure(backbone)
    found = infer_structure(converted.state_dict, converted.deployed)
    if found is not None and found != expected:
        hint = f"arch='{found.arch_name}'" if found.arch_name else "the matching arch"
        raise CheckpointError(
            f"Checkpoint {source} holds {found.describe()} weights, but the backbone is "
            f"{expected.describe()}. Set {hint} in the backbone config to use these weights, "
            f"or use a checkpoint of the backbone's variant."
        )
    state = converted.state_dict
    if converted.deployed and not backbone.deploy:
        raise CheckpointError(
            f"Checkpoint {source} is deployed (fused; {converted.format} format), but the "
            f"RepVGG-{backbone.arch_name} backbone has deploy=False. Build the backbone with "
            "deploy=True to load it; fused weights cannot be split back into the three "
            "training-time branches."
        )
    if backbone.deploy and not converted.deployed:
        logger.info("Fusing the training-time checkpoint %s for a deployed backbone.", source)
        # Fusion folds BN with its eps, so it uses the backbone's; SyncBN folds like BN.
        norm_cfg = {**backbone.norm_cfg, "type": "BN"}
        state = fuse_state_dict(state, backbone.arch, expected.in_channels, norm_cfg, source)
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
    missing = [key for key in model_state if key not in state]
    unexpected = [key for key in state if key not in model_state]
    wrong_shape = [
        f"{key}: checkpoint {tuple(state[key].shape)}, backbone {tuple(value.shape)}"
        for key, value in model_state.items()
        if key in state and state[key].shape != value.shape
    ]
    if missing or unexpected or wrong_shape:
        problems = [
            f"{label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", wrong_shape),
            )
            if keys
        ]
        raise CheckpointError(
            f"Checkpoint {source} does not match the RepVGG-{model.arch_name} backbone (keys "
            "as renamed to ours): " + "; ".join(problems) + ". The file is incomplete or "
            "from a different model; every backbone weight must be present."
        )
    return state


def fuse_state_dict(
    state: Mapping[str, torch.Tensor],
    arch: str | RepVGGArch,
    in_channels: int = 3,
    norm_cfg: dict | None = None,
    source: str = "state dict",
) -> dict[str, torch.Tensor]:
    """Fuses a training-time backbone state dict (our keys) into deployed weights.

    Args:
        state: Training-time backbone state dict with our keys.
        arch: Its variant.
        in_channels: Its input channels.
        norm_cfg: Norm config whose ``eps`` the fusion uses (default BN: 1e-5).
        source: Name of the weights for error messages.
    """
    # Built on the meta device: its random initialization would be overwritten anyway.
    with torch.device("meta"):
        model = RepVGG(arch, in_channels=in_channels, norm_cfg=norm_cfg)
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
    # The meta device skips allocating and initializing weights that are replaced anyway.
    with torch.device("meta"):
        backbone = RepVGG(arch, in_channels=in_channels, deploy=deploy)
    state = backbone_state_dict(converted, backbone, source)
    backbone.load_state_dict(state, strict=True, assign=True)
    meta = {
        "arch": backbone.arch_name,
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
        "Wrote RepVGG-%s (%s) backbone weights from %s (%s format) to %s",
        meta["arch"],
        "deployed" if meta["deploy"] else "training-time",
        src,
        meta["source_format"],
        dst,
    )
    return meta
