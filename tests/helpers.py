"""Shared test utilities (imported by test modules; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@torch.no_grad()
def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Gives every BN random running statistics and affine parameters.

    Default statistics (mean 0, var 1, weight 1, bias 0) hide most fusion bugs.
    """
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.25)
            module.weight.copy_(torch.randn(n, generator=generator) * 0.5 + 1)
            module.bias.copy_(torch.randn(n, generator=generator) * 0.5)
    return model


def assert_outputs_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Float32 round-off agreement: rtol 1e-4, atol scaled to the output magnitude."""
    atol = 1e-5 * max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=atol)
