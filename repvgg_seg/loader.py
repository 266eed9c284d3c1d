"""Config + checkpoint -> segmentor: the one place that builds a model from both.

:func:`load_segmentor` loads every checkpoint form strictly into the model its config
describes:

- a training-time checkpoint (RepVGG blocks with their branches) with its training config;
- a fused checkpoint (blocks re-parameterized, e.g. ``tools/test.py --fuse``'s model saved)
  with the same training config: recognised by its keys
  (:func:`~repvgg_seg.checkpoint.is_deployed_state_dict`), the backbone is built with
  ``deploy=True``;
- a ``tools/deploy.py`` output with the ``*_deploy.py`` config written beside it (folded
  conv+BN, no auxiliary head, Winograd convs or bfloat16, as that config records);
- any of these saved from a DistributedDataParallel wrapper (``module.`` key prefixes);
- an ``.onnx`` model (float32 or INT8) with the config it was exported from: run by ONNX
  Runtime inside the config's own preprocessing and test mode
  (:class:`~repvgg_seg.onnx_segmentor.OnnxEncoderDecoder`).

A checkpoint that does not fit its config, or whose weights hold NaN or infinity, raises
:class:`CheckpointError` naming both files and what to pass instead; nothing is loaded
partially; :func:`check_resumable` applies the same checks to a training's ``--resume``.
``deploy/``, ``inference/``, ``benchmark``, ``runner/`` and the tools use this module; it
sits above ``models/`` and ``weights/``.
The model types a config names are registered by importing the modules in its
``custom_imports`` (a deploy config lists ``repvgg_seg.deploy.segmentor``), mmengine's way.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping

import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import init_default_scope
from mmengine.utils import import_modules_from_strings
from mmseg.models.segmentors import BaseSegmentor
from mmseg.registry import MODELS

from .checkpoint import (
    CheckpointError,
    describe_key_mismatch,
    is_deployed_state_dict,
    meta_of,
    read_checkpoint,
    state_dict_of,
)
from .errors import preview_keys
from .models import RepVGG
from .onnx_segmentor import build_onnx_segmentor, is_onnx_file
from .reparam import reparameterize_model
from .weights import check_backbone_structure

# The segmentor type of a tools/deploy.py config (repvgg_seg.deploy.segmentor registers it).
DEPLOYED_TYPE = "DeployedEncoderDecoder"
DDP_PREFIX = "module."


def config_name(config: str | os.PathLike | Config) -> str:
    """The file a config came from, for messages."""
    if isinstance(config, Config):
        return config.filename or "<config object>"
    return os.fspath(config)


def read_config(config: str | os.PathLike | Config) -> Config:
    """A copy of ``config`` (a Config is copied: the loader sets the backbone's deploy flag).

    Raises:
        FileNotFoundError: There is no such config file.
    """
    if isinstance(config, Config):
        return copy.deepcopy(config)
    if not os.path.isfile(config):
        raise FileNotFoundError(
            f"Config file '{os.fspath(config)}' does not exist; pass one of the files under "
            "configs/ or the *_deploy.py config that tools/deploy.py wrote."
        )
    return Config.fromfile(os.fspath(config))


def input_size_of(cfg: Config) -> tuple[int, int]:
    """``(H, W)`` the config's model is trained at: its data preprocessor's crop size, or
    Cityscapes' 512x1024 crop when the config names none (random check and export inputs)."""
    return tuple(cfg.model.get("data_preprocessor", {}).get("size") or (512, 1024))


def build_segmentor(config: str | os.PathLike | Config) -> BaseSegmentor:
    """Builds a config's segmentor in eval mode without pretrained weights (load them next)."""
    cfg = read_config(config)
    if "custom_imports" in cfg:
        import_modules_from_strings(**cfg.custom_imports)
    init_default_scope(cfg.get("default_scope", "mmseg"))
    model_cfg = cfg.model
    model_cfg.pretrained = None
    model_cfg.backbone.init_cfg = None
    model_cfg.backbone.pop("pretrained", None)
    model = MODELS.build(model_cfg)
    model.eval()
    return model


def segmentor_state(contents: object, source: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model weights of a read checkpoint, without a DistributedDataParallel prefix."""
    state = dict(state_dict_of(contents, source))
    if state and all(key.startswith(DDP_PREFIX) for key in state):
        state = {key.removeprefix(DDP_PREFIX): value for key, value in state.items()}
    return state


def load_segmentor(
    config: str | os.PathLike | Config,
    checkpoint: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    fuse: bool = False,
    contents: object | None = None,
) -> BaseSegmentor:
    """Builds ``config``'s segmentor and loads ``checkpoint`` into it strictly.

    Args:
        config: The config the checkpoint was made with (path or Config; for a
            ``tools/deploy.py`` checkpoint, the ``*_deploy.py`` config beside it).
        checkpoint: A training-time, fused or deployed checkpoint, or an ``.onnx`` model
            (float32 from tools/deploy.py --onnx, INT8 from tools/quantize.py) run by ONNX
            Runtime (:class:`~repvgg_seg.onnx_segmentor.OnnxEncoderDecoder`).
        device: Where the model goes.
        fuse: Re-parameterize the RepVGG blocks after loading (no-op when already fused);
            the caller checks the fusion if it needs to (:mod:`repvgg_seg.equivalence`).
        contents: ``checkpoint`` as :func:`read_checkpoint` returned it, when the caller
            has read it already (it is then not read again).

    Returns:
        The segmentor in eval mode on ``device`` with ``cfg`` (the config it was built from,
        as mmseg's inference API expects) and ``dataset_meta`` (from the checkpoint's meta).

    Raises:
        FileNotFoundError: The config does not exist.
        CheckpointError: The checkpoint cannot be read or does not fit the config; the
            message names both files and what to pass instead.
    """
    cfg = read_config(config)
    # One branch per checkpoint file type, chosen by suffix; .pth and any other suffix are
    # PyTorch checkpoints.
    if is_onnx_file(checkpoint):  # float32 or INT8, run by ONNX Runtime (already fused)
        return build_onnx_segmentor(cfg, checkpoint).to(device)
    if contents is None:
        contents = read_checkpoint(checkpoint)
    return _load_pytorch(cfg, config_name(config), os.fspath(checkpoint), contents, device, fuse)


def _load_pytorch(
    cfg: Config,
    config: str,
    checkpoint: str,
    contents: object,
    device: str | torch.device,
    fuse: bool,
) -> BaseSegmentor:
    _check_one_deploy_run(cfg, contents, checkpoint, config)
    state = segmentor_state(contents, checkpoint)
    check_finite_weights(state, checkpoint)
    deployed = is_deployed_state_dict(state, f"Checkpoint {checkpoint!r}")
    _set_backbone_deploy(cfg, deployed, checkpoint, config)
    model = build_segmentor(cfg)
    _check_fits(model, cfg, config, checkpoint, contents, state)
    model.load_state_dict(state, strict=True)
    if fuse:
        reparameterize_model(model)
    # Plain BN on one device: SyncBN in eval mode is the same computation.
    model = revert_sync_batchnorm(model)
    model.cfg = cfg
    meta = meta_of(contents)
    if meta.get("dataset_meta"):
        model.dataset_meta = meta["dataset_meta"]
    return model.to(device).eval()


def check_resumable(
    config: str | os.PathLike | Config,
    checkpoint: str | os.PathLike,
    *,
    contents: object | None = None,
    model: torch.nn.Module | None = None,
) -> None:
    """Refuses a checkpoint that would not load strictly into ``config``'s training model.

    ``--resume`` loads as strictly as :func:`load_segmentor`: another variant or block type,
    fused blocks, missing or unexpected keys and NaN/Inf weights stop the run before it
    trains, naming both files (mmengine's own resume loads the matching keys and goes on).

    Args:
        config: The training config (path or Config).
        checkpoint: The checkpoint to resume from.
        contents: ``checkpoint`` as :func:`read_checkpoint` returned it, if read already.
        model: The config's model, if built already (a runner's); built here otherwise.

    Raises:
        CheckpointError: The checkpoint cannot be read or does not fit; the message names
            both files and what to pass instead.
    """
    cfg = read_config(config)
    checkpoint = os.fspath(checkpoint)
    if contents is None:
        contents = read_checkpoint(checkpoint)
    state = segmentor_state(contents, checkpoint)
    check_finite_weights(state, checkpoint)
    if is_deployed_state_dict(state, f"Checkpoint {checkpoint!r}"):
        raise CheckpointError(
            f"Checkpoint {checkpoint!r} holds fused (deployed) RepVGG blocks, which cannot be "
            f"trained: resume config {config_name(config)!r} from a training checkpoint "
            "(iter_*.pth of its work dir)."
        )
    _check_fits(
        model or build_segmentor(cfg), cfg, config_name(config), checkpoint, contents, state
    )


def check_finite_weights(state: Mapping[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Refuses weights holding NaN or infinity (a diverged training saved them).

    Such a model computes NaN logits, which mmseg's argmax turns into class 0 everywhere: a
    test would report an mIoU, inference would label every pixel 0, and a deploy would blame
    the fusion. Every checkpoint the loader or a training loads passes here.

    Raises:
        CheckpointError: Some floating-point tensor is not finite; the message names the
            file and the first such keys.
    """
    bad = [
        key
        for key, value in state.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not _finite(value)
    ]
    if bad:
        raise CheckpointError(
            f"Checkpoint {os.fspath(source)!r} holds NaN or infinite weights in {len(bad)} of "
            f"{len(state)} tensors ({preview_keys(bad, 3)}): the training that wrote it "
            "diverged. Use an earlier checkpoint of that run, or train again with a lower "
            "learning rate."
        )


def _finite(tensor: torch.Tensor) -> bool:
    """Whether every element is finite: a NaN or Inf anywhere makes the sum NaN or Inf, and
    the sum is about 10x faster than ``isfinite`` on CPU; only a sum that overflowed (large
    finite values, fp16) is checked element by element."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def _check_fits(
    model: torch.nn.Module,
    cfg: Config,
    config: str,
    checkpoint: str,
    contents: object,
    state: Mapping[str, torch.Tensor],
) -> None:
    """Refuses ``state`` unless it loads strictly into ``model`` (both files named)."""
    deployed = is_deployed_state_dict(state, f"Checkpoint {checkpoint!r}")
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, RepVGG) and deployed is not None:
        prefix = "backbone."
        ours = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        try:
            check_backbone_structure(ours, deployed, backbone, repr(checkpoint))
        except CheckpointError as error:
            raise CheckpointError(f"{error} (config {config!r})") from None
    mismatch = describe_key_mismatch(model.state_dict(), state)
    if mismatch is not None:
        raise CheckpointError(
            f"Checkpoint {checkpoint!r} does not fit the model of config {config!r} (strict "
            f"load): {mismatch}. {_what_to_pass(cfg, contents, deployed)}"
        )


def is_deploy_config(cfg: Config) -> bool:
    """Whether ``cfg`` is a ``tools/deploy.py`` config (its model is already deployed)."""
    return str(cfg.get("model", {}).get("type", "")).split(".")[-1] == DEPLOYED_TYPE


def _check_one_deploy_run(cfg: Config, contents: object, checkpoint: str, config: str) -> None:
    """Refuses a deploy config and checkpoint written by two tools/deploy.py runs."""
    ids = (cfg.get("deploy_id"), meta_of(contents).get("deploy_id"))
    if None not in ids and ids[0] != ids[1]:
        raise CheckpointError(
            f"Config {config!r} and checkpoint {checkpoint!r} were written by different "
            f"tools/deploy.py runs (deploy ids {ids[0]} and {ids[1]}): a deploy was stopped "
            "while publishing, or the files were mixed. Run tools/deploy.py again."
        )


def _set_backbone_deploy(cfg: Config, deployed: bool | None, checkpoint: str, config: str):
    """Builds a RepVGG backbone fused when the checkpoint's blocks are fused."""
    backbone = cfg.model.get("backbone", {})
    if str(backbone.get("type", "")).split(".")[-1] != "RepVGG":
        return
    if deployed:
        backbone["deploy"] = True
    elif deployed is False and backbone.get("deploy"):
        raise CheckpointError(
            f"Checkpoint {checkpoint!r} holds training-time RepVGG blocks, but config "
            f"{config!r} builds a deployed model (backbone deploy=True). Pass the config it "
            "was trained with (tools/test.py --fuse gives the fused model's numbers), or "
            "deploy it first with tools/deploy.py."
        )


def _what_to_pass(cfg: Config, contents: object, deployed: bool | None) -> str:
    """The hint of a strict-load error: which config this checkpoint needs."""
    meta = meta_of(contents)
    from_deploy = "deployed_from" in meta
    if is_deploy_config(cfg) and not from_deploy:
        return (
            "This is a *_deploy.py config, which loads only the checkpoint tools/deploy.py "
            "wrote beside it; pass the training config for a training-time or fused "
            "checkpoint, or deploy this checkpoint with tools/deploy.py."
        )
    if from_deploy and not is_deploy_config(cfg):
        return (
            f"This checkpoint was written by tools/deploy.py (from {meta['deployed_from']!r}); "
            "pass the *_deploy.py config written beside it."
        )
    if deployed:
        return (
            "A checkpoint written by tools/deploy.py loads with the *_deploy.py config "
            "written beside it; any other checkpoint with the config it was trained with."
        )
    return "Pass the config the checkpoint was trained with."
