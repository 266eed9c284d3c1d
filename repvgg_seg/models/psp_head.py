"""PSPNet's head as hszhao/semseg builds it, which RepVGG's ``example_pspnet.py`` copies.

mmseg's ``PSPHead`` gives every pyramid branch ``channels`` (512) outputs, so its 3x3
bottleneck reads ``in_channels + 4 x 512``. semseg's PPM instead reduces each of its
``len(pool_scales)`` branches to ``in_channels / len(pool_scales)`` (B2: 2560 -> 640,
B1g2: 2048 -> 512, ResNet-50: 2048 -> 512), so the bottleneck (semseg's ``cls``: 3x3 conv to
512, BN, ReLU, dropout, 1x1 classifier) reads ``2 x in_channels``. The branches are pooled,
1x1 conv + BN + ReLU, and upsampled bilinearly (``align_corners=True`` in semseg).

Module names follow mmseg's ``PSPHead`` (``psp_modules``, ``bottleneck``, ``conv_seg``), so
tools that walk conv/BN pairs treat both heads alike. Importing this module registers
``SemsegPSPHead`` in mmseg's ``MODELS``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from mmcv.cnn import ConvModule
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.decode_heads.psp_head import PPM
from mmseg.registry import MODELS

from ..errors import UsageError


@MODELS.register_module()
class SemsegPSPHead(BaseDecodeHead):
    """Pyramid pooling head with branches ``in_channels / len(pool_scales)`` wide.

    Args:
        pool_scales: Output sizes of the adaptive average pools (semseg's bins).
        **kwargs: ``BaseDecodeHead`` arguments (``in_channels``, ``channels``: the
            bottleneck's output width, 512 in semseg; ``dropout_ratio``, ``norm_cfg``,
            ``align_corners``, ...).

    Raises:
        ValueError: ``in_channels`` is not divisible by the number of pool scales.
    """

    def __init__(self, pool_scales: Sequence[int] = (1, 2, 3, 6), **kwargs) -> None:
        super().__init__(**kwargs)
        self.pool_scales = tuple(pool_scales)
        if not self.pool_scales or self.in_channels % len(self.pool_scales):
            raise UsageError(
                f"SemsegPSPHead: in_channels={self.in_channels} must be divisible by the "
                f"number of pool_scales {self.pool_scales}; semseg splits the input width "
                f"evenly between the pyramid branches."
            )
        branch_channels = self.in_channels // len(self.pool_scales)
        layer_cfg = dict(conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        self.psp_modules = PPM(
            self.pool_scales,
            self.in_channels,
            branch_channels,
            align_corners=self.align_corners,
            **layer_cfg,
        )
        self.bottleneck = ConvModule(2 * self.in_channels, self.channels, 3, padding=1, **layer_cfg)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self._transform_inputs(inputs)
        pyramid = torch.cat([x, *self.psp_modules(x)], dim=1)
        return self.cls_seg(self.bottleneck(pyramid))
