"""Folding conv + BN pairs outside the RepVGG blocks (heads, ResNet baselines)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import UsageError
from ..reparam import fuse_bn

ConvBNPair = tuple[str, str]


def find_conv_bn_pairs(model: nn.Module, run_forward: Callable[[], object]) -> list[ConvBNPair]:
    """Names of every (conv, BN) pair where the BN reads exactly the conv's output.

    Candidates are sibling modules registered conv-then-BN (mmcv ``ConvModule``, ResNet
    blocks, ``Sequential`` stems); one forward pass (``run_forward``) keeps only those where
    the BN's input *is* the conv's output tensor, which rules out pre-norm layouts and
    convs whose output goes elsewhere first. Modules the forward pass never runs (an
    auxiliary head) are not folded.
    """
    candidates: dict[nn.Module, nn.Conv2d] = {}
    for parent in model.modules():
        previous = None
        for child in parent.children():
            if (
                isinstance(child, _BatchNorm)
                and isinstance(previous, nn.Conv2d)
                and previous.out_channels == child.num_features
            ):
                candidates[child] = previous
            previous = child

    conv_outputs: dict[nn.Module, torch.Tensor] = {}
    confirmed: set[nn.Module] = set()

    def remember_output(conv: nn.Module, args: tuple, output: torch.Tensor) -> None:
        conv_outputs[conv] = output

    def check_input(bn: nn.Module, args: tuple) -> None:
        if args and args[0] is conv_outputs.get(candidates[bn]):
            confirmed.add(bn)

    handles = [conv.register_forward_hook(remember_output) for conv in set(candidates.values())]
    handles += [bn.register_forward_pre_hook(check_input) for bn in candidates]
    try:
        with torch.no_grad():
            run_forward()
    finally:
        for handle in handles:
            handle.remove()
    names = {module: name for name, module in model.named_modules()}
    return [(names[candidates[bn]], names[bn]) for bn in candidates if bn in confirmed]


def replace_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child_name = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child_name, new)


def prepare_folded_structure(model: nn.Module, pairs: Iterable[Sequence[str]]) -> None:
    """Gives each pair's conv a bias and replaces its BN by ``nn.Identity`` (values unset).

    This is the structure a folded checkpoint has; :func:`fold_conv_bn` fills in the values.
    """
    for conv_name, bn_name in pairs:
        conv = model.get_submodule(conv_name)
        bn = model.get_submodule(bn_name)
        if not isinstance(conv, nn.Conv2d) or not isinstance(bn, _BatchNorm | nn.Identity):
            raise UsageError(
                f"folded_conv_bn pair ({conv_name!r}, {bn_name!r}) does not name a conv and a "
                f"BN in this model (found {type(conv).__name__}, {type(bn).__name__}); the "
                "deploy config does not match the model it was written for."
            )
        if conv.bias is None:
            conv.bias = nn.Parameter(conv.weight.new_zeros(conv.out_channels))
        replace_submodule(model, bn_name, nn.Identity())


@torch.no_grad()
def fold_conv_bn(model: nn.Module, pairs: Iterable[Sequence[str]]) -> None:
    """Folds each pair's eval-mode BN into its conv (paper Eq. 3, plus any conv bias)."""
    pairs = list(pairs)
    folded = []
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        kernel, bias = fuse_bn(conv.weight, bn)
        if conv.bias is not None:
            scale, _ = fuse_bn(torch.ones_like(conv.bias).reshape(-1, 1, 1, 1), bn)
            bias = bias + conv.bias * scale.flatten()
        folded.append((conv, kernel, bias))
    prepare_folded_structure(model, pairs)
    for conv, kernel, bias in folded:
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
