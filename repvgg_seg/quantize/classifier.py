"""INT8 post-training quantization of an image classifier, measured by top-1 accuracy.

The segmentor path (:mod:`.pipeline`, ``tools/quantize.py``) for a classifier, on the same
ONNX Runtime steps (:mod:`.onnx_quant`: pre-processing, one calibration, static QDQ S8S8
quantization per tensor or per channel): the QARepVGG study
(``experiments/quantization_study.py``, docs/qarepvgg.md) compares RepVGG and QARepVGG
classifiers with it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ..onnx_segmentor import open_session
from .onnx_quant import collect_ranges, prepare_float_model, quantize_model


@dataclass(frozen=True)
class ClassifierAccuracy:
    """Top-1 of one model form on the evaluation images, and its agreement with float.

    Attributes:
        name: ``'float'``, ``'int8 per-tensor'`` or ``'int8 per-channel'``.
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


def quantize_classifier(
    model: nn.Module,
    image_size: int,
    calibration: Sequence[np.ndarray],
    images: np.ndarray,
    labels: np.ndarray,
    workdir: Path,
    calib_method: str = "minmax",
    num_threads: int = 0,
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
    """
    exported, prepared = workdir / "float.onnx", workdir / "float.prepared.onnx"
    export_classifier(model, exported, image_size)
    float_model = prepare_float_model(exported, prepared)
    ranges = collect_ranges(prepared, list(calibration), calib_method, workdir)
    forms = {"float": float_model}
    for name, per_channel in (("int8 per-tensor", False), ("int8 per-channel", True)):
        forms[name] = quantize_model(float_model, ranges, per_channel)
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
    return results
