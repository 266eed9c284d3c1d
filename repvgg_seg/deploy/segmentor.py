"""The deployed segmentor: fusing it and the config that rebuilds it."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from mmengine.config import Config
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS

from ..checkpoint import meta_of
from ..errors import UsageError
from ..reparam import reparameterize_model
from .fold import ConvBNPair, find_conv_bn_pairs, fold_conv_bn, prepare_folded_structure
from .winograd import MIN_CHANNELS_PER_GROUP, enable_winograd, winograd_mode

logger = logging.getLogger(__name__)

# The precisions a deployed segmentor runs in (DeployedEncoderDecoder's ``precision``).
PRECISIONS = ("fp32", "bf16")


@MODELS.register_module()
class DeployedEncoderDecoder(EncoderDecoder):
    """An ``EncoderDecoder`` whose listed conv/BN pairs are already folded.

    Args:
        folded_conv_bn: ``[conv_name, bn_name]`` pairs, as written by
            :func:`make_deploy_config`; their BNs become ``nn.Identity`` and their convs get
            a bias, so a deployed checkpoint loads strictly.
        winograd: How the eligible 3x3 convs use Winograd F(4x4, 3x3) on CPU: a mode of
            :mod:`repvgg_seg.deploy.winograd` (``auto``, ``on``, ``off``; True means
            ``auto``); parameters and state dict are unchanged.
        winograd_min_channels: Input and output channels per group a conv needs for that.
        precision: ``"fp32"``, or ``"bf16"``: backbone and heads hold bfloat16 weights and
            run on bfloat16 channels-last activations (:func:`to_bfloat16`); the logits are
            returned in float32.
        **kwargs: ``EncoderDecoder`` arguments.
    """

    def __init__(
        self,
        folded_conv_bn: Sequence[Sequence[str]] = (),
        winograd: bool | str = False,
        winograd_min_channels: int = MIN_CHANNELS_PER_GROUP,
        precision: str = "fp32",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if winograd_min_channels < 1:
            raise UsageError(
                f"winograd_min_channels must be at least 1, got {winograd_min_channels}."
            )
        if precision not in PRECISIONS:
            raise UsageError(f"precision is {precision!r}; pass one of {', '.join(PRECISIONS)}.")
        self.folded_conv_bn = [tuple(pair) for pair in folded_conv_bn]
        prepare_folded_structure(self, self.folded_conv_bn)
        self.precision = precision
        if precision == "bf16":
            to_bfloat16(self)
        # Winograd is a float32 CPU algorithm; bf16 convs are oneDNN's (AMX / AVX512-BF16).
        mode = winograd_mode(winograd) if precision == "fp32" else "off"
        self.winograd_convs = enable_winograd(self, winograd_min_channels, mode)

    def extract_feat(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        if self.precision == "bf16":
            inputs = inputs.to(torch.bfloat16, memory_format=torch.channels_last)
        return super().extract_feat(inputs)

    def encode_decode(self, inputs: torch.Tensor, batch_img_metas: list[dict]) -> torch.Tensor:
        # EncoderDecoder.encode_decode with the logits in float32 before they are resized.
        logits = self.decode_head.forward(self.extract_feat(inputs)).float()
        return self.decode_head.predict_by_feat(logits, batch_img_metas)

    def _forward(self, inputs: torch.Tensor, data_samples=None) -> torch.Tensor:
        return super()._forward(inputs, data_samples).float()


def native_bf16(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU computes bfloat16 natively (``avx512_bf16`` or ``amx_bf16`` flags).

    Returns:
        None when ``cpuinfo`` cannot be read (not Linux): unknown.
    """
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags = {
        flag for line in text.splitlines() if line.startswith("flags") for flag in line.split()
    }
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def is_bf16_deployment(cfg: Config, contents: object | None = None) -> bool:
    """Whether a config (and the checkpoint read with it) is a ``tools/deploy.py --bf16``
    output: the deploy config's model records ``precision='bf16'``, or the checkpoint's meta
    does (a bf16 checkpoint whose weights a float32 config would cast back, unnoticed).

    Args:
        cfg: The config.
        contents: The checkpoint as :func:`repvgg_seg.checkpoint.read_checkpoint` returned
            it, or None to decide from the config alone.
    """
    if cfg.get("model", {}).get("precision") == "bf16":
        return True
    return contents is not None and meta_of(contents).get("precision") == "bf16"


def refuse_bf16_deployment(
    cfg: Config, checkpoint: str | os.PathLike, needs: str, contents: object | None = None
) -> None:
    """Refuses a bf16 deployment as the float32 model a tool starts from.

    Its weights are rounded to bfloat16: as a reference it would check a model against
    itself, and ONNX export and quantization need float32 weights.

    Args:
        needs: What the tool does with the float32 model, for the message.

    Raises:
        UsageError: :func:`is_bf16_deployment`; the message says what to pass instead.
    """
    if not is_bf16_deployment(cfg, contents):
        return
    source = meta_of(contents).get("deployed_from") if contents is not None else None
    origin = f" (this one was deployed from {source!r})" if source else ""
    raise UsageError(
        f"Checkpoint {os.fspath(checkpoint)!r} with config {cfg.filename!r} is a bf16 "
        f"deployment (tools/deploy.py --bf16): its weights are rounded to bfloat16, and "
        f"{needs}. Pass the training (or float32 deployed) checkpoint with its config"
        f"{origin}."
    )


def to_bfloat16(model: EncoderDecoder) -> EncoderDecoder:
    """Backbone, neck and heads in bfloat16 and channels-last, in place.

    The data preprocessor stays float32: its mean and std rounded to bfloat16 would shift
    every normalized pixel.
    """
    for name in ("backbone", "neck", "decode_head", "auxiliary_head"):
        part = getattr(model, name, None)
        if part is not None:
            part.to(dtype=torch.bfloat16, memory_format=torch.channels_last)
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
    winograd: bool | str = "off",
    winograd_min_channels: int = MIN_CHANNELS_PER_GROUP,
    precision: str = "fp32",
) -> Config:
    """The config that rebuilds a segmentor deployed by :func:`deploy_segmentor`.

    ``winograd``, ``winograd_min_channels`` and ``precision`` go to
    :class:`DeployedEncoderDecoder`. ``cfg`` may be a deploy config already (a deployed
    checkpoint deployed again, e.g. in bfloat16): its folded pairs are kept.

    Raises:
        ValueError: the config's model is not an mmseg ``EncoderDecoder``.
    """
    cfg = copy.deepcopy(cfg)
    model = cfg.model
    if str(model.get("type", "")).split(".")[-1] not in (
        "EncoderDecoder",
        "DeployedEncoderDecoder",
    ):
        raise UsageError(
            f"model.type is {model.get('type')!r}; deploy supports mmseg 'EncoderDecoder' "
            "segmentors (PSPNet, FCN, DeepLabV3, ...)."
        )
    model.type = "DeployedEncoderDecoder"
    earlier = [list(pair) for pair in model.get("folded_conv_bn", [])]
    model.folded_conv_bn = earlier + [list(p) for p in pairs if list(p) not in earlier]
    model.precision = precision
    model.winograd = winograd_mode(winograd) if precision == "fp32" else "off"
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
