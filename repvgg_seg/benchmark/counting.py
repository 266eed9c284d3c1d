"""Multiply-accumulates of one forward pass, counted by hooks on the convs and linears."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def count_macs(module: nn.Module, image: torch.Tensor) -> int:
    """Multiply-accumulates of the convs and linears in one forward pass of ``image``."""
    total = 0

    def conv_hook(conv: nn.Conv2d, args: tuple, output: torch.Tensor) -> None:
        nonlocal total
        per_output = conv.weight.shape[1] * conv.weight.shape[2] * conv.weight.shape[3]
        total += output.numel() * per_output

    def linear_hook(linear: nn.Linear, args: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * linear.in_features

    handles = []
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            handles.append(sub.register_forward_hook(conv_hook))
        elif isinstance(sub, nn.Linear):
            handles.append(sub.register_forward_hook(linear_hook))
    try:
        module(image)
    finally:
        for handle in handles:
            handle.remove()
    return total
