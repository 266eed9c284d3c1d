"""The RepVGG block (paper Fig. 2, Sec. 3.3).

Training time: ``ReLU(BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x))``, the identity branch only
where it preserves shape. Deploy time: ``ReLU(conv3x3'(x) + b')``.

The branch attribute names (``branch_3x3``, ``branch_1x1``, ``branch_identity``,
``fused_conv``) are this package's checkpoint key layout; :mod:`repvgg_seg.checkpoint` reads
it by the same names.
"""

from __future__ import annotations

import functools

import torch
from mmcv.cnn import build_norm_layer
from torch import nn

from ..reparam import fuse_bn, identity_kernel, pad_to_3x3
from .arch import has_identity_branch

DEFAULT_NORM_CFG = {"type": "BN", "requires_grad": True}


def fused_conv3x3(
    in_channels: int,
    out_channels: int,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    skip_init: bool = False,
) -> nn.Conv2d:
    """A deployed RepVGG layer's conv: 3x3 with bias, padding equal to the dilation.

    ``skip_init`` leaves the weights uninitialized: they are about to be overwritten, and
    initializing a large random kernel costs more than the whole fusion.
    """
    make = functools.partial(torch.nn.utils.skip_init, nn.Conv2d) if skip_init else nn.Conv2d
    return make(
        in_channels,
        out_channels,
        3,
        stride=stride,
        padding=dilation,
        dilation=dilation,
        groups=groups,
        bias=True,
    )


class ConvBN(nn.Module):
    """A bias-free conv followed by a norm layer (one RepVGG branch)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        dilation: int,
        groups: int,
        norm_cfg: dict,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=False,
        )
        self.bn = build_norm_layer(norm_cfg, out_channels)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class RepVGGBlock(nn.Module):
    """One RepVGG layer, training-time (three branches) or deployed (one conv).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the 3x3 and the 1x1 branch.
        dilation: Dilation of the 3x3 conv; its padding equals it. The 1x1 branch keeps
            padding 0: the centre tap of a dilated 3x3 is still the centre pixel, so the
            fusion stays exact.
        groups: Groups of the 3x3 and the 1x1 conv.
        norm_cfg: mmcv norm config of the branches (BN, SyncBN, ...).
        deploy: Build only the fused conv.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        norm_cfg: dict | None = None,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups={groups} must divide in_channels={in_channels} and "
                f"out_channels={out_channels}."
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.dilation = dilation
        self.groups = groups
        self.deploy = deploy
        norm_cfg = dict(norm_cfg or DEFAULT_NORM_CFG)
        if deploy:
            self.fused_conv = self._make_fused_conv()
        else:
            self.branch_3x3 = ConvBN(
                in_channels, out_channels, 3, stride, dilation, dilation, groups, norm_cfg
            )
            self.branch_1x1 = ConvBN(in_channels, out_channels, 1, stride, 0, 1, groups, norm_cfg)
            self.branch_identity = (
                build_norm_layer(norm_cfg, in_channels)[1]
                if has_identity_branch(in_channels, out_channels, stride)
                else None
            )
        self.act = nn.ReLU(inplace=True)

    def _make_fused_conv(self, skip_init: bool = False) -> nn.Conv2d:
        return fused_conv3x3(
            self.in_channels, self.out_channels, self.stride, self.dilation, self.groups, skip_init
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            return self.act(self.fused_conv(x))
        out = self.branch_3x3(x) + self.branch_1x1(x)
        if self.branch_identity is not None:
            out = out + self.branch_identity(x)
        return self.act(out)

    def get_equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The 3x3 kernel and bias equivalent to the three branches in eval mode.

        Differentiable, so it can feed regularizers on the equivalent kernel.
        """
        if self.deploy:
            return self.fused_conv.weight, self.fused_conv.bias
        kernel, bias = fuse_bn(self.branch_3x3.conv.weight, self.branch_3x3.bn)
        kernel_1x1, bias_1x1 = fuse_bn(self.branch_1x1.conv.weight, self.branch_1x1.bn)
        kernel = kernel + pad_to_3x3(kernel_1x1)
        bias = bias + bias_1x1
        if self.branch_identity is not None:
            eye = identity_kernel(self.in_channels, self.groups, kernel.device, kernel.dtype)
            kernel_id, bias_id = fuse_bn(eye, self.branch_identity)
            kernel = kernel + kernel_id
            bias = bias + bias_id
        return kernel, bias

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Replaces the branches by the equivalent fused conv. Idempotent."""
        if self.deploy:
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        fused = self._make_fused_conv(skip_init=True).to(device=kernel.device, dtype=kernel.dtype)
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
        del self.branch_3x3, self.branch_1x1, self.branch_identity
        self.fused_conv = fused
        self.deploy = True

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, "
            f"dilation={self.dilation}, groups={self.groups}, deploy={self.deploy}"
        )
