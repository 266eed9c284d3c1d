"""The deployed segmentor with fake-quantized convs, as ONNX Runtime's QDQ model computes it.

Quantization-aware training here simulates exactly the INT8 model that
:func:`~.onnx_quant.quantize_model` writes, so that what is trained is what is exported:

- the activation scales and zero points are read from that QDQ model
  (:func:`conv_quantization`): each Conv node (named after its PyTorch module) reads a
  ``DequantizeLinear`` input and feeds a ``QuantizeLinear`` output, whose parameters come
  from the calibration; they stay fixed during training and are the ones exported;
- the weights are fake-quantized as ONNX Runtime quantizes them at export, from their
  current values: signed 8-bit, symmetric, ``scale = max|w| / 127`` per output channel (or
  per tensor), so the exported weights are the trained ones rounded the same way.

Rounding uses PyTorch's own fake-quantization ops (straight-through gradients).
:class:`QATSegmentor` is the mmengine model the runner trains: the fake-quantized segmentor,
trained on the config's loss and, optionally, distilled from the float model's logits.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from onnx import numpy_helper
from torch import nn

from ..deploy import disable_winograd
from ..deploy.fold import replace_submodule

# Signed 8-bit: activations asymmetric over the full range, weights symmetric (-127..127),
# ONNX Runtime's S8S8 QDQ (quant_utils.get_qmin_qmax_for_qType).
ACTIVATION_RANGE = (-128, 127)
WEIGHT_RANGE = (-127, 127)


@dataclass(frozen=True)
class TensorQuant:
    """One activation's quantization parameters (per tensor)."""

    scale: float
    zero_point: int


@dataclass(frozen=True)
class ConvQuant:
    """How the QDQ model quantizes one conv: its input, its output and its weight.

    Attributes:
        input: The input activation's parameters (None: the input stays float).
        output: The output's (None: float); a conv followed by ReLU has the ReLU's.
        weight: Whether the weight is INT8 (False: the conv was kept in float32).
    """

    input: TensorQuant | None
    output: TensorQuant | None
    weight: bool


def conv_quantization(qdq_model: onnx.ModelProto) -> dict[str, ConvQuant]:
    """The quantization of every Conv node of a QDQ model, by node (module) name."""
    graph = qdq_model.graph
    constants = {init.name: init for init in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)

    def parameters(node: onnx.NodeProto) -> TensorQuant:
        scale = numpy_helper.to_array(constants[node.input[1]])
        zero_point = numpy_helper.to_array(constants[node.input[2]])
        # A uint8 activation (tools/quantize.py --activations uint8) is the int8 one + 128.
        shift = 128 if zero_point.dtype == np.uint8 else 0
        return TensorQuant(float(scale), int(zero_point) - shift)

    found = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        source = producers.get(node.input[0])
        weight = producers.get(node.input[1])
        quantizers = [n for n in consumers[node.output[0]] if n.op_type == "QuantizeLinear"]
        found[node.name] = ConvQuant(
            input=parameters(source)
            if source is not None and source.op_type == "DequantizeLinear"
            else None,
            output=parameters(quantizers[0]) if len(quantizers) == 1 else None,
            weight=weight is not None and weight.op_type == "DequantizeLinear",
        )
    return found


def fake_quantize_weight(weight: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """``weight`` rounded to signed 8-bit as ONNX Runtime quantizes it (symmetric)."""
    if per_channel:
        absmax = weight.detach().abs().flatten(1).amax(1)
    else:
        absmax = weight.detach().abs().amax()
    absmax = absmax.float()
    # ONNX Runtime's compute_scale_zp: a zero range gets scale 1.
    scale = torch.where(absmax > 0, absmax / WEIGHT_RANGE[1], torch.ones_like(absmax))
    zero_point = torch.zeros_like(scale, dtype=torch.int32)
    if per_channel:
        rounded = torch.fake_quantize_per_channel_affine(
            weight.float(), scale, zero_point, 0, *WEIGHT_RANGE
        )
    else:
        rounded = torch.fake_quantize_per_tensor_affine(
            weight.float(), scale, zero_point, *WEIGHT_RANGE
        )
    return rounded.to(weight.dtype)


class FakeQuantConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose input, weight and output are rounded as in the QDQ model.

    Its parameters keep the names of the conv it replaces (``weight``, ``bias``); the
    activations' scales and zero points are buffers (``input_scale``, ...), fixed.
    """

    per_channel: bool = True
    quantize_weight: bool = True

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, quant: ConvQuant, per_channel: bool) -> FakeQuantConv2d:
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            device="meta",
        )
        new.weight, new.bias = conv.weight, conv.bias
        new.per_channel, new.quantize_weight = per_channel, quant.weight
        for side in ("input", "output"):
            params: TensorQuant | None = getattr(quant, side)
            scale = torch.tensor(params.scale if params else 1.0)
            zero_point = torch.tensor(params.zero_point if params else 0, dtype=torch.int32)
            new.register_buffer(f"{side}_scale", scale.to(conv.weight.device))
            new.register_buffer(f"{side}_zero_point", zero_point.to(conv.weight.device))
            setattr(new, f"quantize_{side}", params is not None)
        return new

    def _fake_quantize(self, x: torch.Tensor, side: str) -> torch.Tensor:
        scale, zero_point = getattr(self, f"{side}_scale"), getattr(self, f"{side}_zero_point")
        rounded = torch.fake_quantize_per_tensor_affine(
            x.float(), scale, zero_point, *ACTIVATION_RANGE
        )
        return rounded.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantize_input:
            x = self._fake_quantize(x, "input")
        weight = self.weight
        if self.quantize_weight:
            weight = fake_quantize_weight(weight, self.per_channel)
        y = self._conv_forward(x, weight, self.bias)
        return self._fake_quantize(y, "output") if self.quantize_output else y


def insert_fake_quant(
    model: nn.Module, quantization: dict[str, ConvQuant], per_channel: bool
) -> list[str]:
    """Replaces, in place, each conv of ``model`` named in ``quantization`` (Conv node names,
    ``#2`` marking a module run twice) by a :class:`FakeQuantConv2d` sharing its parameters.

    Returns:
        The names of the replaced convs.

    Raises:
        RuntimeError: A Conv node names no conv of ``model`` (the graph is not this model's).
    """
    disable_winograd(model)  # the graph's convs are plain; so are the trained ones
    replaced = []
    for name, quant in quantization.items():
        if "#" in name:
            continue  # the same module again: it has one set of parameters
        try:
            conv = model.get_submodule(name)
        except AttributeError:
            conv = None
        if type(conv) is not nn.Conv2d:
            raise RuntimeError(f"ONNX Conv node {name!r} is no nn.Conv2d of the model ({conv}).")
        replace_submodule(model, name, FakeQuantConv2d.from_conv(conv, quant, per_channel))
        replaced.append(name)
    return replaced


class QATSegmentor(BaseModel):
    """What the runner trains: a fake-quantized segmentor, and its float teacher.

    Only the fake-quantized convs' weights and biases train (the exported graph holds no
    other parameter). The loss is the config's decode-head loss times ``label_weight`` plus
    ``distill_weight`` times the KL divergence from the float model's per-pixel class
    distribution (at the head's resolution), which keeps the INT8 predictions on the
    float model's.

    Args:
        student: The deployed segmentor after :func:`insert_fake_quant`.
        teacher: The deployed float segmentor (frozen; needed when ``distill_weight > 0``).
        label_weight: Weight of the config's loss on the ground truth.
        distill_weight: Weight of the distillation loss.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        label_weight: float = 1.0,
        distill_weight: float = 0.0,
    ) -> None:
        super().__init__(data_preprocessor=student.data_preprocessor)
        self.student = student
        self.teacher = teacher if distill_weight > 0 else None
        self.label_weight, self.distill_weight = label_weight, distill_weight
        trained = {
            id(p)
            for m in student.modules()
            if isinstance(m, FakeQuantConv2d)
            for p in m.parameters()
        }
        for parameter in student.parameters():
            parameter.requires_grad_(id(parameter) in trained)
        if self.teacher is not None:
            self.teacher.requires_grad_(False)

    def init_weights(self) -> None:
        """Nothing: the weights are the checkpoint's (mmengine's runner calls this before
        training, and the default would re-initialize them)."""

    def train(self, mode: bool = True) -> QATSegmentor:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # its dropout off: a fixed target
        for module in self.student.modules():
            # A BN that was not folded keeps its statistics; dropout would only add noise
            # to a fine-tuning whose target is the float model's function.
            if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.Dropout2d | nn.Dropout):
                module.eval()
        return self

    def forward(self, inputs: torch.Tensor, data_samples=None, mode: str = "tensor"):
        if mode != "loss":
            return self.student(inputs, data_samples, mode)
        logits = self.student.decode_head.forward(self.student.extract_feat(inputs))
        losses = {}
        if self.label_weight > 0:
            for key, value in self.student.decode_head.loss_by_feat(logits, data_samples).items():
                losses[key] = value * self.label_weight if "loss" in key else value
        if self.teacher is not None:
            with torch.no_grad():
                target = self.teacher.decode_head.forward(self.teacher.extract_feat(inputs))
            divergence = F.kl_div(
                F.log_softmax(logits.float(), 1),
                F.log_softmax(target.float(), 1),
                reduction="none",
                log_target=True,
            )
            losses["loss_distill"] = self.distill_weight * divergence.sum(1).mean()
        return losses
