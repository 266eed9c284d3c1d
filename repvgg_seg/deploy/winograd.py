"""Winograd convs in a deployed model: which convs, when, and the modes.

:class:`WinogradConv2d` is an ``nn.Conv2d`` with the same parameters and state dict that
runs :func:`repvgg_seg.deploy.winograd_algorithm.winograd_conv2d` (Winograd F(4x4, 3x3),
equal to the direct conv up to float32 round-off) only where it pays and is exact in that
sense: CPU, float32, inference (no autograd), 3x3, stride 1, at least
:data:`MIN_CHANNELS_PER_GROUP` input and output channels per group. Anywhere else (training,
GPU, autocast, export, ``torch.compile``) it is the ordinary conv.

Whether Winograd pays depends on the CPU: where oneDNN's direct convs run near the machine's
peak (AVX-512 hosts), some layers are slower by Winograd, others faster. So a converted conv
has a *mode* (:data:`WINOGRAD_MODES`): ``on`` always takes the Winograd path where it applies,
``auto`` (the default) times both paths on its first input of each shape and keeps the faster
(:class:`repvgg_seg.deploy.autotune.ConvAutotuner`, as cuDNN's autotuner does; decisions
cached for the process), so that a float32 model is not slowed down by Winograd layers.
"""

from __future__ import annotations

import torch
from torch import nn

from .autotune import AUTOTUNER, WINOGRAD_MODES, winograd_mode
from .winograd_algorithm import transform_weight, winograd_conv2d

__all__ = [
    "AUTOTUNER",
    "MIN_CHANNELS_PER_GROUP",
    "WINOGRAD_MODES",
    "WinogradConv2d",
    "disable_winograd",
    "enable_winograd",
    "transform_weight",
    "winograd_applies",
    "winograd_conv2d",
    "winograd_mode",
]

MIN_CHANNELS_PER_GROUP = 256
"""Below this many input or output channels per group the direct conv is as fast or faster
(measured with ``tools/benchmark_winograd.py``: 128 channels at 1/4 resolution ran 0.8x)."""


class WinogradConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose inference forward on CPU uses :func:`winograd_conv2d`.

    Same parameters and state dict as ``nn.Conv2d``; build it with
    :func:`enable_winograd`, which only converts convs for which :func:`winograd_applies`.
    The transformed weight is cached and recomputed whenever the weight changes. In ``auto``
    mode (``winograd_mode``) the Winograd path is taken only for input shapes on which
    :data:`AUTOTUNER` found it faster than the direct conv.
    """

    winograd_mode = "on"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fast_path_applies(x):
            return super().forward(x)
        if self.winograd_mode == "auto" and not AUTOTUNER.use_winograd(
            self._shape_key(x),
            lambda: super(WinogradConv2d, self).forward(x),
            lambda: self._winograd(x),
        ):
            return super().forward(x)
        return self._winograd(x)

    def _winograd(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.detach() if self.bias is not None else None
        return winograd_conv2d(
            x, self._transformed_weight(), bias, self.padding[0], self.dilation[0]
        )

    def _shape_key(self, x: torch.Tensor) -> str:
        """What the two paths' speeds depend on (the conv, the input, the threads), readable."""
        layout = "NHWC" if x.is_contiguous(memory_format=torch.channels_last) else "NCHW"
        return (
            f"{self.in_channels}->{self.out_channels} groups {self.groups} dilation "
            f"{self.dilation[0]} padding {self.padding[0]} on {'x'.join(map(str, x.shape))} "
            f"{layout}, {torch.get_num_threads()} threads"
        )

    def _fast_path_applies(self, x: torch.Tensor) -> bool:
        if torch.jit.is_scripting() or torch.jit.is_tracing():
            return False
        if torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
            return False
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return False
        if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4:
            return False
        if self.weight.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
            return False
        d = self.dilation[0]
        return x.shape[2] + 2 * self.padding[0] > 2 * d and x.shape[3] + 2 * self.padding[0] > 2 * d

    def _transformed_weight(self) -> torch.Tensor:
        key = (self.weight.data_ptr(), self.weight._version, self.weight.device)
        cached = getattr(self, "_winograd_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, transform_weight(self.weight, self.groups))
            self._winograd_cache = cached
        return cached[1]


def winograd_applies(conv: nn.Module, min_channels_per_group: int = MIN_CHANNELS_PER_GROUP) -> bool:
    """Whether :class:`WinogradConv2d` would take the Winograd path for this conv."""
    if type(conv) not in (nn.Conv2d, WinogradConv2d):
        return False
    return (
        conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.dilation[0] == conv.dilation[1]
        and isinstance(conv.padding, tuple)
        and conv.padding[0] == conv.padding[1]
        and conv.padding_mode == "zeros"
        and conv.in_channels // conv.groups >= min_channels_per_group
        and conv.out_channels // conv.groups >= min_channels_per_group
    )


def enable_winograd(
    model: nn.Module, min_channels_per_group: int = MIN_CHANNELS_PER_GROUP, mode: str = "auto"
) -> list[str]:
    """Turns every eligible ``nn.Conv2d`` of ``model`` into a :class:`WinogradConv2d`, in place.

    Parameters are shared, not copied, so the state dict is unchanged.

    Args:
        model: Converted in place.
        min_channels_per_group: Input and output channels per group a conv needs.
        mode: ``auto`` (Winograd where it is faster, timed per input shape on first use),
            ``on`` (wherever it applies) or ``off`` (nothing converted).

    Returns:
        The names of the converted convs.
    """
    mode = winograd_mode(mode)
    if mode == "off":
        return []
    converted = []
    for name, module in list(model.named_modules()):
        if type(module) is nn.Conv2d and winograd_applies(module, min_channels_per_group):
            module.__class__ = WinogradConv2d
            module.winograd_mode = mode
            converted.append(name)
    return converted


def disable_winograd(model: nn.Module) -> int:
    """Turns every :class:`WinogradConv2d` back into ``nn.Conv2d``; returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is WinogradConv2d:
            module.__class__ = nn.Conv2d
            module.__dict__.pop("_winograd_cache", None)
            module.__dict__.pop("winograd_mode", None)
            count += 1
    return count
