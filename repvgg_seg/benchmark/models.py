"""The models a benchmark times besides a config's segmentor as built."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..deploy import deploy_segmentor, enable_winograd
from ..deploy.winograd import winograd_mode
from ..models.arch import DILATION_MODES, get_arch, layer_plan
from ..models.blocks import fused_conv3x3


class BackboneOnly(nn.Module):
    """The backbone of a segmentor, returning its last output."""

    def __init__(self, segmentor: nn.Module) -> None:
        super().__init__()
        self.backbone = segmentor.backbone

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.backbone(image)[-1]


def plain_repvgg(arch_name: str, dilation_mode: str = "fast") -> nn.Sequential:
    """A deployed RepVGG as the official release runs it: only ``Conv2d(3x3, bias)`` + ReLU.

    The reference for "no overhead from our abstractions": the backbone's own layer plan
    (:func:`repvgg_seg.models.arch.layer_plan`: widths, groups, strides, dilations), none of
    its modules.
    """
    plan = layer_plan(get_arch(arch_name), *DILATION_MODES[dilation_mode])
    layers: list[nn.Module] = []
    for spec in (spec for stage in plan for spec in stage):
        conv = fused_conv3x3(
            spec.in_channels, spec.out_channels, spec.stride, spec.dilation, spec.groups
        )
        layers += [conv, nn.ReLU()]
    return nn.Sequential(*layers)


def deployed_copy(segmentor: nn.Module, winograd: bool | str = False) -> nn.Module:
    """A deployed copy (:func:`repvgg_seg.deploy.deploy_segmentor`) of ``segmentor``.

    ``winograd`` (``off``/``on``/``auto``, or a bool for off/on) runs its eligible 3x3 convs
    by Winograd F(4x4, 3x3) (:func:`repvgg_seg.deploy.enable_winograd`), as a deploy config
    with that ``winograd`` builds them: ``auto`` times both paths per conv shape on first use.
    """
    model = copy.deepcopy(segmentor)
    deploy_segmentor(model, torch.randn(1, 3, 64, 64))
    mode = winograd_mode("on" if winograd is True else "off" if winograd is False else winograd)
    if mode != "off":
        enable_winograd(model, mode=mode)
    return model
