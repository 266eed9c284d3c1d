"""RepVGG backbone for mmsegmentation (Ding et al., "RepVGG: Making VGG-style ConvNets
Great Again", CVPR 2021).

Registered in mmseg's ``MODELS`` as ``'RepVGG'``. Dilation is built in the constructor,
with the paper's three settings one argument each (``dilation_mode``, see
:data:`repvgg_seg.models.arch.DILATION_MODES`):

- ``'classification'``: every stage starts with stride 2 (output stride 32).
- ``'dilated'``: paper stages 4 and 5 have stride 1 and dilation 2 and 4 (output stride 8),
  like PSPNet's dilated ResNets.
- ``'fast'``: output stride 8, but only the last 5 layers are dilated: the last 4 layers of
  stage 4 (dilation 2) and the stage-5 layer (dilation 4). Our reading of the paper
  (Sec. 4.3): all of stages 4 and 5 keep stride 1 and the earlier stage-4 layers have
  dilation 1.

``block_type='QARepVGG'`` builds the same layers from QARepVGG blocks (Chu et al., AAAI 2024;
see :mod:`repvgg_seg.models.blocks`); deployed, the two are the same network.

The layers themselves come from :func:`repvgg_seg.models.arch.layer_plan`. A ``Pretrained``
init_cfg is served by the weight initializer that :mod:`repvgg_seg.weights` registers under
:data:`PRETRAINED_INITIALIZER`; this module does not import the weights package.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from mmengine.registry import WEIGHT_INITIALIZERS
from mmseg.registry import MODELS
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..checkpoint import is_deployed_state_dict
from ..errors import UsageError
from .arch import (
    DILATION_MODES,
    LayerSpec,
    RepVGGArch,
    canonical_arch_name,
    check_block_type,
    get_arch,
    layer_plan,
)
from .blocks import BLOCKS, DEFAULT_NORM_CFG, ReparamBlock

# The WEIGHT_INITIALIZERS name of repvgg_seg.weights.loading.RepVGGPretrainedInit.
PRETRAINED_INITIALIZER = "RepVGGPretrained"

__all__ = ["DILATION_MODES", "PRETRAINED_INITIALIZER", "RepVGG", "pretrained_source"]


def pretrained_source(init_cfg: Any) -> dict | None:
    """The ``checkpoint`` and ``prefix`` that a ``Pretrained`` init_cfg asks for, or None
    when it asks for none.

    ``init_cfg`` may be one dict or a list of them, as mmengine allows.
    """
    cfgs = init_cfg if isinstance(init_cfg, list | tuple) else [init_cfg]
    for cfg in cfgs:
        if isinstance(cfg, Mapping) and cfg.get("type") == "Pretrained":
            if not cfg.get("checkpoint"):
                raise UsageError(
                    "init_cfg type='Pretrained' needs checkpoint=: 'repvgg:B2' (published "
                    "ImageNet weights), an http(s) URL, or a local path."
                )
            return {"checkpoint": cfg["checkpoint"], "prefix": cfg.get("prefix")}
    return None


@MODELS.register_module()
class RepVGG(BaseModule):
    """RepVGG backbone with the mmseg backbone contract.

    Stages are the paper's five: index 0 is the stem, 1-4 are paper stages 2-5.

    Args:
        arch: Variant name (``'A0'`` ... ``'B3g4'``, also ``'RepVGG-B2'``) or a
            :class:`RepVGGArch`.
        in_channels: Input image channels.
        dilation_mode: ``'classification'``, ``'dilated'`` or ``'fast'`` (module docstring).
        strides: Per-stage strides (5 values), overriding ``dilation_mode``'s.
        dilations: Per-stage dilations (5 values), overriding ``dilation_mode``'s.
        dilated_layers: Dilate only the last N layers of the network (the others use
            dilation 1); ``None`` dilates whole stages. Overrides ``dilation_mode``'s.
        out_indices: Stages whose outputs ``forward`` returns, in this order.
        frozen_stages: Freeze stages ``0..frozen_stages`` (-1: none).
        norm_cfg: mmcv norm config (``dict(type='BN')``, ``dict(type='SyncBN')``, ...).
        norm_eval: Keep norm layers in eval mode while training.
        with_cp: Gradient checkpointing per block (saves memory, costs time).
        deploy: Build fused blocks (one 3x3 conv each) instead of three branches.
        block_type: ``'RepVGG'`` or ``'QARepVGG'`` (:data:`~repvgg_seg.models.arch.BLOCK_TYPES`):
            the training-time block. Deployed backbones of both types are identical.
        init_cfg: mmengine init config; ``dict(type='Pretrained', checkpoint=...)`` loads
            ImageNet weights (see :mod:`repvgg_seg.weights`).
    """

    def __init__(
        self,
        arch: str | RepVGGArch = "A0",
        in_channels: int = 3,
        dilation_mode: str = "classification",
        strides: Sequence[int] | None = None,
        dilations: Sequence[int] | None = None,
        dilated_layers: int | None = None,
        out_indices: Sequence[int] = (1, 2, 3, 4),
        frozen_stages: int = -1,
        norm_cfg: dict | None = None,
        norm_eval: bool = False,
        with_cp: bool = False,
        deploy: bool = False,
        block_type: str = "RepVGG",
        init_cfg: dict | list[dict] | None = None,
    ) -> None:
        if init_cfg is None:
            init_cfg = [
                {"type": "Kaiming", "layer": "Conv2d"},
                {"type": "Constant", "val": 1, "layer": ["_BatchNorm", "GroupNorm"]},
            ]
        super().__init__(init_cfg=init_cfg)
        if dilation_mode not in DILATION_MODES:
            raise UsageError(
                f"Unknown dilation_mode {dilation_mode!r}; choose one of "
                f"{', '.join(DILATION_MODES)}."
            )
        self.arch_name = arch if isinstance(arch, RepVGGArch) else canonical_arch_name(arch)
        self.arch = get_arch(arch)
        self.block_type = check_block_type(block_type)
        mode_strides, mode_dilations, mode_dilated_layers = DILATION_MODES[dilation_mode]
        self.strides = tuple(strides if strides is not None else mode_strides)
        self.dilations = tuple(dilations if dilations is not None else mode_dilations)
        if dilated_layers is None and strides is None and dilations is None:
            dilated_layers = mode_dilated_layers
        self.dilated_layers = dilated_layers
        for name, values in (("strides", self.strides), ("dilations", self.dilations)):
            if len(values) != 5 or any(int(v) < 1 for v in values):
                raise UsageError(f"{name} must be 5 positive integers (stem first), got {values}.")
        num_stages = len(self.arch.channels)
        out_indices = tuple(out_indices)
        if not out_indices or any(not 0 <= i < num_stages for i in out_indices):
            raise UsageError(f"out_indices must be in [0, {num_stages - 1}], got {out_indices}.")
        if not -1 <= frozen_stages < num_stages:
            raise UsageError(
                f"frozen_stages must be in [-1, {num_stages - 1}], got {frozen_stages}."
            )
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.deploy = deploy
        self.norm_cfg = dict(norm_cfg or DEFAULT_NORM_CFG)

        plan = layer_plan(self.arch, self.strides, self.dilations, self.dilated_layers, in_channels)
        blocks = [[self._build_block(spec) for spec in stage] for stage in plan]
        self.stem = blocks[0][0]
        self.stages = nn.ModuleList(nn.Sequential(*stage) for stage in blocks[1:])
        self._freeze_stages()

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels of each output, in ``out_indices`` order."""
        return tuple(self.arch.channels[i] for i in self.out_indices)

    @property
    def model_name(self) -> str:
        """``'RepVGG-A0'`` or ``'QARepVGG-A0'``, for messages."""
        return f"{self.block_type}-{self.arch_name}"

    def _build_block(self, spec: LayerSpec) -> ReparamBlock:
        return BLOCKS[self.block_type](
            spec.in_channels,
            spec.out_channels,
            stride=spec.stride,
            dilation=spec.dilation,
            groups=spec.groups,
            norm_cfg=self.norm_cfg,
            deploy=self.deploy,
        )

    def stage(self, index: int) -> nn.Module:
        """Stage ``index`` (0 is the stem)."""
        return self.stem if index == 0 else self.stages[index - 1]

    def _run_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        blocks = [stage] if isinstance(stage, ReparamBlock) else list(stage)
        for block in blocks:
            if self.with_cp and self.training and x.requires_grad:
                x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = {}
        for index in range(max(self.out_indices) + 1):
            x = self._run_stage(self.stage(index), x)
            outs[index] = x
        return tuple(outs[i] for i in self.out_indices)

    def _freeze_stages(self) -> None:
        for index in range(self.frozen_stages + 1):
            stage = self.stage(index)
            stage.eval()
            for param in stage.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> RepVGG:
        """Sets the mode, then re-applies ``frozen_stages`` and ``norm_eval``."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def init_weights(self) -> None:
        """Initializes weights; a ``Pretrained`` init_cfg loads any RepVGG checkpoint format."""
        source = pretrained_source(self.init_cfg)
        if source is None:
            super().init_weights()
            return
        WEIGHT_INITIALIZERS.build({"type": PRETRAINED_INITIALIZER, **source})(self)
        self._is_init = True

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Fuses every block into one 3x3 conv. Idempotent."""
        for module in self.modules():
            if isinstance(module, ReparamBlock):
                module.switch_to_deploy()
        self.deploy = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        keys = [k[len(prefix) :] for k in state_dict if k.startswith(prefix)]
        deployed = is_deployed_state_dict(keys, f"The {self.model_name} state dict")
        if self.deploy and deployed is False:
            raise RuntimeError(
                f"This {self.model_name} backbone is deployed (deploy=True) but the "
                "state dict is a training-time checkpoint (keys '...branch_3x3...'). Build "
                "the model with deploy=False, load it, then call switch_to_deploy() (or "
                "repvgg_seg.reparam.reparameterize_model), or convert the file with "
                "tools/convert_checkpoint.py."
            )
        if not self.deploy and deployed is True:
            raise RuntimeError(
                f"This {self.model_name} backbone is training-time (deploy=False) but "
                "the state dict is a deployed (fused) checkpoint (keys '...fused_conv...'). "
                "Build the model with deploy=True to load it; a fused checkpoint cannot be "
                "turned back into three branches."
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
