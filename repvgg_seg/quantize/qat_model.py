"""The deployed segmentor with fake-quantized convs, as ONNX Runtime's QDQ model computes it.

Quantization-aware training here simulates exactly the INT8 model that
:func:`~.onnx_quant.quantize_model` writes, so that what is trained is what is exported:

- the activation scales and zero points are read from that QDQ model
  (:func:`conv_quantization`): each Conv node (named after its PyTorch module) reads a
  ``DequantizeLinear`` input and feeds a ``QuantizeLinear`` output, whose parameters come
  from the calibration; they stay fixed during training and are the ones exported, or,
  with :class:`ActivationScales` (LSQ), the scales train, one per tensor of the QDQ model,
  and the trained ones are exported (:func:`with_activation_scales`);
- the weights are fake-quantized as ONNX Runtime quantizes them at export, from their
  current values: signed 8-bit, symmetric, ``scale = max|w| / 127`` per output channel (or
  per tensor), so the exported weights are the trained ones rounded the same way.

Rounding uses PyTorch's own fake-quantization ops (straight-through gradients).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import torch
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
    """One activation's quantization parameters (per tensor), and the name of the QDQ
    model's scale initializer (shared by the QuantizeLinear and DequantizeLinear nodes of
    one tensor)."""

    scale: float
    zero_point: int
    scale_name: str = ""


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
        return TensorQuant(float(scale), int(zero_point) - shift, node.input[1])

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


class ActivationScales(nn.Module):
    """Learned activation scales (LSQ, Esser et al. 2020): one per scale initializer of the
    QDQ model, initialised from the calibration's and shared by every conv that reads or
    writes that tensor, so that the exported model can hold them. Zero points stay fixed.

    Args:
        initial: The calibration's scales by initializer name.
    """

    def __init__(self, initial: dict[str, float]) -> None:
        super().__init__()
        self.names = sorted(initial)
        self.index = {name: i for i, name in enumerate(self.names)}
        self.scales = nn.Parameter(torch.tensor([initial[name] for name in self.names]))

    def get(self, name: str) -> torch.Tensor:
        i = self.index[name]
        # Kept positive: LSQ's step size is a scale; a tiny floor keeps x / scale finite.
        return self.scales[i : i + 1].clamp(min=1e-8)

    def values(self) -> dict[str, float]:
        """The current scales by initializer name, as the exported model holds them."""
        return dict(zip(self.names, self.scales.detach().clamp(min=1e-8).tolist(), strict=True))


class FakeQuantConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose input, weight and output are rounded as in the QDQ model.

    Its parameters keep the names of the conv it replaces (``weight``, ``bias``); the
    activations' scales and zero points are buffers (``input_scale``, ...), fixed, unless
    ``learned_scales`` (:func:`learn_activation_scales`) holds trained ones.
    """

    per_channel: bool = True
    quantize_weight: bool = True
    learned_scales: ActivationScales | None = None  # not a submodule: shared, owned above

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
            setattr(new, f"{side}_scale_name", params.scale_name if params else "")
        return new

    def _fake_quantize(self, x: torch.Tensor, side: str) -> torch.Tensor:
        scale, zero_point = getattr(self, f"{side}_scale"), getattr(self, f"{side}_zero_point")
        if self.learned_scales is None:
            rounded = torch.fake_quantize_per_tensor_affine(
                x.float(), scale, zero_point, *ACTIVATION_RANGE
            )
        else:
            # Gradient factor 1 (torch's _LearnableFakeQuantize default), not LSQ's
            # 1 / sqrt(numel * Qp): on the demo model that made a scale's relative gradient
            # 1500x smaller than a weight's, and the scales would not move in 200 iterations.
            rounded = torch._fake_quantize_learnable_per_tensor_affine(
                x.float(),
                self.learned_scales.get(getattr(self, f"{side}_scale_name")),
                zero_point.float().reshape(1),
                *ACTIVATION_RANGE,
                1.0,
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


def fake_quant_convs(model: nn.Module) -> Iterable[tuple[str, FakeQuantConv2d]]:
    return ((n, m) for n, m in model.named_modules() if isinstance(m, FakeQuantConv2d))


def learn_activation_scales(model: nn.Module) -> ActivationScales:
    """Makes the activation scales of ``model``'s fake-quantized convs trainable, shared per
    QDQ tensor; registers them as ``model.activation_scales`` and returns them."""
    convs = [conv for _, conv in fake_quant_convs(model)]
    initial = {}
    for conv, side in ((c, s) for c in convs for s in ("input", "output")):
        if getattr(conv, f"quantize_{side}"):
            initial[getattr(conv, f"{side}_scale_name")] = float(getattr(conv, f"{side}_scale"))
    model.activation_scales = ActivationScales(initial).to(next(model.parameters()).device)
    for conv in convs:
        object.__setattr__(conv, "learned_scales", model.activation_scales)
    return model.activation_scales


def with_activation_scales(qdq_model: onnx.ModelProto, scales: dict[str, float]) -> None:
    """Writes ``scales`` into ``qdq_model``'s scale initializers of the same names, in place.

    Raises:
        RuntimeError: A name is no scalar float32 initializer of the model (the model is not
            the one the scales were read from).
    """
    initializers = {init.name: init for init in qdq_model.graph.initializer}
    for name, value in scales.items():
        init = initializers.get(name)
        if init is None or numpy_helper.to_array(init).shape != () or init.data_type != 1:
            raise RuntimeError(f"QDQ model: {name!r} is no scalar float32 scale initializer.")
        init.CopyFrom(numpy_helper.from_array(np.array(value, dtype=np.float32), name))


def conv_parameters(graph: onnx.GraphProto, model: nn.Module) -> dict[str, str]:
    """Initializer name -> name of the parameter it holds, for each Conv node's weight and
    bias (a Conv node is named after its module, ``#2`` marking a module run twice; a bias
    the module does not have is left out)."""
    parameters = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        module_name = node.name.split("#")[0]
        module = model.get_submodule(module_name)
        for index, attribute in ((1, "weight"), (2, "bias")):
            if len(node.input) > index and getattr(module, attribute) is not None:
                parameters[node.input[index]] = f"{module_name}.{attribute}"
    return parameters


def with_trained_weights(
    prepared: onnx.ModelProto,
    trained: nn.Module,
    reference: nn.Module,
    parameters: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """A copy of the float graph whose initializers named in ``parameters`` hold
    ``trained``'s values instead of ``reference``'s (the model the graph was exported from).

    Args:
        prepared: The float graph (:func:`~.onnx_quant.prepare_float_model`).
        trained: The fine-tuned model; same parameter names as ``reference``.
        reference: The model ``prepared`` was exported from.
        parameters: Initializer name -> the parameter it holds (e.g. ``conv1.weight``);
            :func:`conv_parameters` for the segmentor's export. None: every parameter of
            ``trained``, by its own name (a classifier's export names its initializers so).

    Raises:
        RuntimeError: An initializer is not in the graph, or does not hold ``reference``'s
            parameter (the graph is not this model's).
    """
    model = onnx.ModelProto()
    model.CopyFrom(prepared)
    constants = {init.name: init for init in model.graph.initializer}
    if parameters is None:
        parameters = {name: name for name, _ in trained.named_parameters()}
    if missing := sorted(parameters[name] for name in parameters if name not in constants):
        raise RuntimeError(f"Trained parameters not in the float graph: {missing}.")
    for name, parameter in parameters.items():
        init = constants[name]
        before = _tensor(reference, parameter).detach().float().numpy()
        if not np.allclose(numpy_helper.to_array(init), before, atol=1e-6):
            raise RuntimeError(f"Initializer {name!r} is not the model's {parameter}.")
        after = _tensor(trained, parameter).detach().float().numpy()
        init.CopyFrom(numpy_helper.from_array(after, name))
    return model


def _tensor(model: nn.Module, name: str) -> torch.Tensor:
    module_name, _, attribute = name.rpartition(".")
    return getattr(model.get_submodule(module_name), attribute)
