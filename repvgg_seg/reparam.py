"""Structural re-parameterization: folding a block's branches into one 3x3 conv.

The kernel math (RepVGG paper Eq. 3, and QARepVGG's BN after the sum) lives here as small
differentiable functions on tensors;
:func:`reparameterize_model` applies it to every re-parameterizable block of any module,
a whole mmseg segmentor included.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def fuse_bn(
    kernel: torch.Tensor, bn: _BatchNorm, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Folds an eval-mode BN into the conv (kernel, optional bias) before it (paper Eq. 3).

    Works for every ``_BatchNorm`` (BN and SyncBN) with its own ``eps``; a BN without
    affine parameters counts as weight 1, bias 0. Differentiable.

    Args:
        kernel: The conv kernel, ``(out_channels, in_channels / groups, k, k)``.
        bn: The BN after the conv.
        bias: The conv's bias (QARepVGG's sum of branches has one); None for none.

    Returns:
        ``(kernel * gamma / std, beta + (bias - mean) * gamma / std)``.
    """
    std = (bn.running_var + bn.eps).sqrt()
    gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
    scale = gamma / std
    centred = -bn.running_mean if bias is None else bias - bn.running_mean
    return kernel * scale.reshape(-1, 1, 1, 1), beta + centred * scale


def pad_to_3x3(kernel: torch.Tensor) -> torch.Tensor:
    """Zero-pads a 1x1 kernel to 3x3 (weight in the centre); 3x3 kernels pass through."""
    if kernel.shape[-1] == 3:
        return kernel
    return F.pad(kernel, [1, 1, 1, 1])


def identity_kernel(
    channels: int, groups: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """The 3x3 kernel of the identity map of a ``groups``-grouped conv with ``channels``."""
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, 3, 3, device=device, dtype=dtype)
    index = torch.arange(channels, device=device)
    kernel[index, index % per_group, 1, 1] = 1
    return kernel


def reparameterize_model(model: nn.Module, inplace: bool = True) -> nn.Module:
    """Fuses every re-parameterizable block inside ``model`` for deployment.

    A block is anything with a ``switch_to_deploy()`` method (our ``RepVGGBlock``,
    ``QARepVGGBlock`` and ``RepVGG`` backbone, and the same protocol used by mmpretrain and
    mmdet), so this works on a bare backbone, a classifier or a whole mmseg segmentor. Run it
    in eval mode semantics: BN running statistics are folded, not batch statistics.

    Args:
        model: The module to fuse.
        inplace: Fuse ``model`` itself; otherwise a deep copy is fused and ``model``
            is left untouched.

    Returns:
        The fused module (``model`` itself when ``inplace``).
    """
    if not inplace:
        model = copy.deepcopy(model)
    for module in list(model.modules()):
        switch = getattr(module, "switch_to_deploy", None)
        if callable(switch):
            switch()
    return model
