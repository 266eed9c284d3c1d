"""The re-parameterizable blocks: RepVGG's (paper Fig. 2, Sec. 3.3) and QARepVGG's.

- RepVGG, training time: ``ReLU(BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x))``.
- QARepVGG (Chu et al., "Make RepVGG Greater Again: A Quantization-aware Approach", AAAI
  2024; their ``QARepVGGBlockV2``), training time: ``ReLU(BN(BN(conv3x3(x)) + conv1x1(x) +
  x))``: the 1x1 has no bias and no BN, the identity no BN, and one BN follows the sum.

In both the identity branch exists only where it preserves shape, and both deploy as the same
layer, ``ReLU(conv3x3'(x) + b')``: a fused network does not know which block it came from.

The branch attribute names (``branch_3x3``, ``branch_1x1``, ``branch_identity``, ``bn``,
``fused_conv``) are this package's checkpoint key layout; :mod:`repvgg_seg.checkpoint` reads
it by the same names.
"""

from __future__ import annotations

import functools

import torch
from mmcv.cnn import build_norm_layer
from torch import nn

from ..errors import UsageError
from ..reparam import fuse_bn, identity_kernel, pad_to_3x3
from .arch import BLOCK_TYPES, has_identity_branch

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


class ReparamBlock(nn.Module):
    """A 3x3 layer with training-time branches that fuse into one conv: the shared part.

    Subclasses build their branches (:meth:`_build_branches`), sum them
    (:meth:`_forward_branches`) and say which 3x3 kernel and bias they equal
    (:meth:`get_equivalent_kernel_bias`); deploying, the deployed forward and the argument
    checks are common.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the 3x3 and the 1x1 branch.
        dilation: Dilation of the 3x3 conv; its padding equals it. The 1x1 branch keeps
            padding 0: the centre tap of a dilated 3x3 is still the centre pixel, so the
            fusion stays exact.
        groups: Groups of the 3x3 and the 1x1 conv.
        norm_cfg: mmcv norm config of the BN layers (BN, SyncBN, ...).
        deploy: Build only the fused conv.
    """

    # Attribute names of the training-time modules, deleted when the block is fused.
    branch_names: tuple[str, ...] = ()

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
            raise UsageError(
                f"groups={groups} must divide in_channels={in_channels} and "
                f"out_channels={out_channels}."
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.dilation = dilation
        self.groups = groups
        self.deploy = deploy
        if deploy:
            self.fused_conv = self._make_fused_conv()
        else:
            norm_cfg = dict(norm_cfg or DEFAULT_NORM_CFG)
            self.branch_3x3 = ConvBN(
                in_channels, out_channels, 3, stride, dilation, dilation, groups, norm_cfg
            )
            self._build_branches(norm_cfg)
        self.act = nn.ReLU(inplace=True)

    @property
    def has_identity(self) -> bool:
        """The training-time block has an identity branch (shape-preserving layers only)."""
        return has_identity_branch(self.in_channels, self.out_channels, self.stride)

    def _build_branches(self, norm_cfg: dict) -> None:
        """Builds ``branch_1x1``, ``branch_identity`` (None where it would change the
        shape) and whatever else the block has beside ``branch_3x3``."""
        raise NotImplementedError

    def _forward_branches(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch_3x3(x) + self.branch_1x1(x)
        if self.branch_identity is not None:
            out = out + self.branch_identity(x)
        return out

    def _branches_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def get_equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The 3x3 kernel and bias equivalent to the branches in eval mode.

        Differentiable, so it can feed regularizers on the equivalent kernel.
        """
        if self.deploy:
            return self.fused_conv.weight, self.fused_conv.bias
        return self._branches_kernel_bias()

    def _make_fused_conv(self, skip_init: bool = False) -> nn.Conv2d:
        return fused_conv3x3(
            self.in_channels, self.out_channels, self.stride, self.dilation, self.groups, skip_init
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            return self.act(self.fused_conv(x))
        return self.act(self._forward_branches(x))

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Replaces the branches by the equivalent fused conv. Idempotent."""
        if self.deploy:
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        fused = self._make_fused_conv(skip_init=True).to(device=kernel.device, dtype=kernel.dtype)
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
        for name in ("branch_3x3", *self.branch_names):
            delattr(self, name)
        self.fused_conv = fused
        self.deploy = True

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, "
            f"dilation={self.dilation}, groups={self.groups}, deploy={self.deploy}"
        )


class RepVGGBlock(ReparamBlock):
    """One RepVGG layer: 3x3 conv + BN, 1x1 conv + BN and identity BN, summed, then ReLU.

    Arguments as :class:`ReparamBlock`.
    """

    branch_names = ("branch_1x1", "branch_identity")

    def _build_branches(self, norm_cfg: dict) -> None:
        self.branch_1x1 = ConvBN(
            self.in_channels, self.out_channels, 1, self.stride, 0, 1, self.groups, norm_cfg
        )
        self.branch_identity = (
            build_norm_layer(norm_cfg, self.in_channels)[1] if self.has_identity else None
        )

    def _branches_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
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


class QARepVGGBlock(ReparamBlock):
    """One QARepVGG layer (``QARepVGGBlockV2``): 3x3 conv + BN, bias-free 1x1 conv and
    identity, summed, then one BN, then ReLU.

    The paper traces RepVGG's INT8 loss to the BNs of the 1x1 and identity branches, which
    widen the fused kernel's and the output's ranges; dropping them and normalizing once after
    the sum keeps the fused layer quantizable. Arguments as :class:`ReparamBlock`.
    """

    branch_names = ("branch_1x1", "branch_identity", "bn")

    def _build_branches(self, norm_cfg: dict) -> None:
        self.branch_1x1 = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            1,
            stride=self.stride,
            groups=self.groups,
            bias=False,
        )
        # No parameters; a module (not a flag) only to mirror the authors' structure.
        self.branch_identity = nn.Identity() if self.has_identity else None
        self.bn = build_norm_layer(norm_cfg, self.out_channels)[1]

    def _forward_branches(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(super()._forward_branches(x))

    def _branches_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        kernel, bias = fuse_bn(self.branch_3x3.conv.weight, self.branch_3x3.bn)
        kernel = kernel + pad_to_3x3(self.branch_1x1.weight)
        if self.branch_identity is not None:
            kernel = kernel + identity_kernel(
                self.in_channels, self.groups, kernel.device, kernel.dtype
            )
        return fuse_bn(kernel, self.bn, bias)


# block_type -> block class, in models.arch.BLOCK_TYPES order (zip fails on a missing one).
BLOCKS: dict[str, type[ReparamBlock]] = dict(
    zip(BLOCK_TYPES, (RepVGGBlock, QARepVGGBlock), strict=True)
)
