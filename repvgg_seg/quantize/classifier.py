"""INT8 post-training quantization of an image classifier, measured by top-1 accuracy.

The segmentor path (:mod:`.pipeline`, ``tools/quantize.py``) for a classifier, on the same
ONNX Runtime steps (:mod:`.onnx_quant`: pre-processing, one calibration, static QDQ S8S8
quantization per tensor or per channel): the QARepVGG study
(``experiments/quantization_study.py``, docs/qarepvgg.md) compares RepVGG and QARepVGG
classifiers with it.

With a :class:`ClassifierQAT` it also fine-tunes each INT8 form with the project's
quantization-aware training (:mod:`.qat_model`: weights fake-quantized as ONNX Runtime rounds
them, activations with the PTQ model's fixed scales), here for the classifier's graph: its
nodes are matched to modules by their weight initializers (the parameters' names), and the
FC (a ``Gemm`` node, quantized by ONNX Runtime too) is fake-quantized as well, so that the
trained model computes what its export does. The trained weights replace the float graph's
and are quantized with the PTQ ranges: the QAT model has the PTQ model's activation scales.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from ..deploy.fold import replace_submodule
from ..errors import UsageError
from ..onnx_segmentor import open_session
from .onnx_quant import collect_ranges, prepare_float_model, quantize_model
from .qat_model import (
    ACTIVATION_RANGE,
    ConvQuant,
    TensorQuant,
    conv_quantization,
    fake_quantize_weight,
    insert_fake_quant,
    with_trained_weights,
)

QAT_LOSSES = ("distill", "labels")


@dataclass(frozen=True)
class ClassifierAccuracy:
    """Top-1 of one model form on the evaluation images, and its agreement with float.

    Attributes:
        name: ``'float'``, ``'int8 per-tensor'``, ``'int8 per-channel'``, and with QAT
            ``'qat per-tensor'`` and ``'qat per-channel'``.
        top1: Top-1 accuracy in percent.
        agreement: Percentage of images whose predicted class equals the float model's.
    """

    name: str
    top1: float
    agreement: float


def export_classifier(model: nn.Module, path: Path, image_size: int, opset: int = 18) -> None:
    """Exports ``model`` (``N,3,S,S`` images -> logits) to ONNX with a dynamic batch."""
    model = copy.deepcopy(model).eval().float()
    example = torch.randn(1, 3, image_size, image_size)
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        opset_version=opset,
        verbose=False,
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
    )
    path.write_bytes(program.model_proto.SerializeToString())


def predict(model: onnx.ModelProto | Path, images: np.ndarray, num_threads: int = 0) -> np.ndarray:
    """Predicted classes of ``images`` (``N,3,S,S`` float32) by ONNX Runtime."""
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    session = open_session(source, num_threads)
    input_name = session.get_inputs()[0].name
    logits = [session.run(None, {input_name: batch})[0] for batch in np.array_split(images, 8)]
    return np.concatenate(logits).argmax(axis=1)


@dataclass(frozen=True)
class ClassifierQAT:
    """Quantization-aware fine-tuning of a fused classifier after its PTQ.

    SGD (momentum 0.9, no weight decay), the LR annealed to 0 by a cosine over ``steps``,
    batches drawn without replacement, reshuffled by ``seed`` every pass over the images.

    Attributes:
        images: Training images, ``N,3,S,S`` float32, normalized like the evaluation images.
        labels: Their classes (read only by the ``labels`` loss).
        steps: Optimizer steps.
        lr: The initial LR (per batch, not scaled).
        batch_size: Images per step.
        loss: ``distill`` (KL divergence to the float model's logits) or ``labels``
            (cross-entropy on ``labels``).
        seed: Seeds the shuffling.
    """

    images: torch.Tensor
    labels: torch.Tensor
    steps: int = 100
    lr: float = 1e-3
    batch_size: int = 64
    loss: str = "distill"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in QAT_LOSSES:
            raise UsageError(f"QAT loss {self.loss!r} is not known; pass one of {QAT_LOSSES}.")
        if self.steps < 1 or self.batch_size < 1 or len(self.images) < self.batch_size:
            raise UsageError(
                f"QAT: {self.steps} steps of {self.batch_size} images from "
                f"{len(self.images)}: pass steps >= 1 and at least one batch of images."
            )


def quantize_classifier(
    model: nn.Module,
    image_size: int,
    calibration: Sequence[np.ndarray],
    images: np.ndarray,
    labels: np.ndarray,
    workdir: Path,
    calib_method: str = "minmax",
    num_threads: int = 0,
    qat: ClassifierQAT | None = None,
) -> list[ClassifierAccuracy]:
    """Float and INT8 (per tensor, per channel) top-1 of a classifier under ONNX Runtime.

    Args:
        model: The classifier, as deployed (RepVGG fused, or any ``nn.Module``).
        image_size: Side of the square input images.
        calibration: Normalized ``1,3,S,S`` float32 images for the activation ranges.
        images: Evaluation images, ``N,3,S,S`` float32, normalized like ``calibration``.
        labels: Their classes.
        workdir: An existing folder for the intermediate ONNX files.
        calib_method: A key of :data:`~.onnx_quant.CALIBRATION_METHODS`.
        num_threads: ONNX Runtime intra-op threads (0: its choice).
        qat: Also fine-tune each INT8 form (:func:`fine_tune_classifier`) and measure it.
    """
    exported, prepared = workdir / "float.onnx", workdir / "float.prepared.onnx"
    export_classifier(model, exported, image_size)
    float_model = prepare_float_model(exported, prepared)
    ranges = collect_ranges(prepared, list(calibration), calib_method, workdir)
    forms = {"float": float_model}
    for granularity, per_channel in (("per-tensor", False), ("per-channel", True)):
        ptq = forms[f"int8 {granularity}"] = quantize_model(float_model, ranges, per_channel)
        if qat is not None:
            student = fake_quant_classifier(model, float_model, ptq, per_channel)
            fine_tune_classifier(student, model, qat)
            trained = with_trained_weights(float_model, student, model)
            forms[f"qat {granularity}"] = quantize_model(trained, ranges, per_channel)
    reference = predict(float_model, images, num_threads)
    results = []
    for name, form in forms.items():
        predicted = reference if name == "float" else predict(form, images, num_threads)
        results.append(
            ClassifierAccuracy(
                name=name,
                top1=100.0 * float((predicted == labels).mean()),
                agreement=100.0 * float((predicted == reference).mean()),
            )
        )
    return sorted(results, key=lambda result: result.name.startswith("qat"))


# ---------------------------------------------------------------- QAT of a classifier


class FakeQuantLinear(nn.Linear):
    """``nn.Linear`` rounded as the QDQ model's ``Gemm``: its input, weight and output, like
    :class:`~.qat_model.FakeQuantConv2d` a conv (the bias stays float: int32 in the QDQ
    model, a round-off far below the output's step)."""

    quant: ConvQuant
    per_channel: bool

    @classmethod
    def from_linear(cls, linear: nn.Linear, quant: ConvQuant, per_channel: bool):
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, "meta")
        new.weight, new.bias = linear.weight, linear.bias
        new.quant, new.per_channel = quant, per_channel
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _fake_quantize(x, self.quant.input)
        weight = fake_quantize_weight(self.weight, self.per_channel)
        return _fake_quantize(F.linear(x, weight, self.bias), self.quant.output)


def _fake_quantize(x: torch.Tensor, params: TensorQuant | None) -> torch.Tensor:
    if params is None:
        return x
    return torch.fake_quantize_per_tensor_affine(
        x, params.scale, params.zero_point, *ACTIVATION_RANGE
    )


def fake_quant_classifier(
    model: nn.Module, prepared: onnx.ModelProto, qdq: onnx.ModelProto, per_channel: bool
) -> nn.Module:
    """A copy of ``model`` whose convs and FC compute what ``qdq`` computes.

    Args:
        model: The fused classifier ``prepared`` was exported from.
        prepared: Its float graph (:func:`~.onnx_quant.prepare_float_model`).
        qdq: ``prepared`` quantized (:func:`~.onnx_quant.quantize_model`).
        per_channel: Whether ``qdq``'s weights have one scale per output channel.

    Raises:
        RuntimeError: A Conv or Gemm weight is no parameter of ``model``.
    """
    student = copy.deepcopy(model).float()
    modules, biased = {}, set()
    initializers = {init.name for init in prepared.graph.initializer}
    for node in prepared.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            weight = node.input[1]
            if weight not in initializers or not weight.endswith(".weight"):
                raise RuntimeError(f"{node.op_type} {node.name!r}: no parameter {weight!r}.")
            modules[node.name] = weight.removesuffix(".weight")
            if len(node.input) > 2 and node.input[2]:
                biased.add(node.name)
    # conv_quantization reads a Conv node's QDQ neighbours; shown as Conv, the Gemm's too.
    relabeled = onnx.ModelProto()
    relabeled.CopyFrom(qdq)
    gemms = set()
    for node in relabeled.graph.node:
        if node.op_type == "Gemm":
            node.op_type = "Conv"
            gemms.add(node.name)
    found = conv_quantization(relabeled)
    convs = {modules[name]: found[name] for name in found if name not in gemms}
    insert_fake_quant(student, convs, per_channel)
    for name in gemms:
        linear = student.get_submodule(modules[name])
        replace_submodule(
            student, modules[name], FakeQuantLinear.from_linear(linear, found[name], per_channel)
        )
    for name in set(found) - biased:
        # The exporter drops a conv bias that is all zero: keep it at zero.
        student.get_submodule(modules[name]).bias = None
    return student


def fine_tune_classifier(student: nn.Module, teacher: nn.Module, qat: ClassifierQAT) -> None:
    """Trains ``student`` (:func:`fake_quant_classifier`) in place as ``qat`` says."""
    teacher = copy.deepcopy(teacher).float().eval()
    parameters = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=qat.lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, qat.steps)
    generator = torch.Generator().manual_seed(qat.seed)
    batches_per_pass = len(qat.images) // qat.batch_size
    student.train()
    for step in range(qat.steps):
        if step % batches_per_pass == 0:
            order = torch.randperm(len(qat.images), generator=generator)
        index = order[(step % batches_per_pass) * qat.batch_size :][: qat.batch_size]
        images = qat.images[index]
        logits = student(images)
        if qat.loss == "labels":
            loss = F.cross_entropy(logits, qat.labels[index])
        else:
            with torch.no_grad():
                target = F.log_softmax(teacher(images), dim=1)
            loss = F.kl_div(
                F.log_softmax(logits, dim=1), target, reduction="batchmean", log_target=True
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    student.eval()
