"""The deployed segmentor: fusing it and the config that rebuilds it."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from mmengine.config import Config
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS

from ..reparam import reparameterize_model
from .fold import ConvBNPair, find_conv_bn_pairs, fold_conv_bn, prepare_folded_structure
from .winograd import MIN_CHANNELS_PER_GROUP, enable_winograd

logger = logging.getLogger(__name__)


@MODELS.register_module()
class DeployedEncoderDecoder(EncoderDecoder):
    """An ``EncoderDecoder`` whose listed conv/BN pairs are already folded.

    Args:
        folded_conv_bn: ``[conv_name, bn_name]`` pairs, as written by
            :func:`make_deploy_config`; their BNs become ``nn.Identity`` and their convs get
            a bias, so a deployed checkpoint loads strictly.
        winograd: Run the eligible 3x3 convs by Winograd F(4x4, 3x3) on CPU
            (:mod:`repvgg_seg.deploy.winograd`); parameters and state dict are unchanged.
        winograd_min_channels: Input and output channels per group a conv needs for that.
        **kwargs: ``EncoderDecoder`` arguments.
    """

    def __init__(
        self,
        folded_conv_bn: Sequence[Sequence[str]] = (),
        winograd: bool = False,
        winograd_min_channels: int = MIN_CHANNELS_PER_GROUP,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if winograd_min_channels < 1:
            raise ValueError(
                f"winograd_min_channels must be at least 1, got {winograd_min_channels}."
            )
        self.folded_conv_bn = [tuple(pair) for pair in folded_conv_bn]
        prepare_folded_structure(self, self.folded_conv_bn)
        self.winograd_convs = enable_winograd(self, winograd_min_channels) if winograd else []


def build_segmentor(config: str | Path | Config) -> EncoderDecoder:
    """Builds a config's segmentor in eval mode without pretrained weights (load them next)."""
    from mmengine.registry import init_default_scope
    from mmengine.utils import import_modules_from_strings

    cfg = Config.fromfile(str(config)) if not isinstance(config, Config) else copy.deepcopy(config)
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


def deploy_segmentor(
    model: EncoderDecoder, example_input: torch.Tensor, fuse_conv_bn: bool = True
) -> list[ConvBNPair]:
    """Turns a trained segmentor into its deployed form, in place.

    Fuses the RepVGG blocks, drops the auxiliary head and (``fuse_conv_bn``) folds every
    conv+BN pair that ``example_input`` (a normalized ``N,3,H,W`` batch) runs through.

    Returns:
        The folded (conv, BN) module names, for :func:`make_deploy_config`.
    """
    model.eval()
    reparameterize_model(model)
    model.auxiliary_head = None
    if not fuse_conv_bn:
        return []
    pairs = find_conv_bn_pairs(model, lambda: model(example_input, mode="tensor"))
    fold_conv_bn(model, pairs)
    logger.info("folded %d conv+BN pairs", len(pairs))
    return pairs


def make_deploy_config(
    cfg: Config,
    pairs: Sequence[ConvBNPair],
    winograd: bool = True,
    winograd_min_channels: int = MIN_CHANNELS_PER_GROUP,
) -> Config:
    """The config that rebuilds a segmentor deployed by :func:`deploy_segmentor`.

    ``winograd`` and ``winograd_min_channels`` go to :class:`DeployedEncoderDecoder`.

    Raises:
        ValueError: the config's model is not an mmseg ``EncoderDecoder``.
    """
    cfg = copy.deepcopy(cfg)
    model = cfg.model
    if str(model.get("type", "")).split(".")[-1] not in (
        "EncoderDecoder",
        "DeployedEncoderDecoder",
    ):
        raise ValueError(
            f"model.type is {model.get('type')!r}; deploy supports mmseg 'EncoderDecoder' "
            "segmentors (PSPNet, FCN, DeepLabV3, ...)."
        )
    model.type = "DeployedEncoderDecoder"
    model.folded_conv_bn = [list(pair) for pair in pairs]
    model.winograd = winograd
    model.winograd_min_channels = winograd_min_channels
    model.pretrained = None
    model.auxiliary_head = None
    model.backbone.init_cfg = None
    model.backbone.pop("pretrained", None)
    if str(model.backbone.type).split(".")[-1] == "RepVGG":
        model.backbone.deploy = True
    imports = list(cfg.get("custom_imports", {}).get("imports", []))
    for module in ("repvgg_seg", __name__):
        if module not in imports:
            imports.append(module)
    cfg.custom_imports = {"imports": imports, "allow_failed_imports": False}
    return cfg
