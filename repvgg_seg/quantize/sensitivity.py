"""Which convs lose the most when quantized: one conv at a time, as YOLOv6 ranks them.

RepVGG's fused 3x3 kernels carry the identity and 1x1 branches in their centre taps, which
widens their weight ranges; a few layers (often the first and the last) then account for
most of the INT8 error. Each conv is quantized alone, every other node left in float32,
and scored by how far that alone moves the logits on the calibration images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnxruntime.quantization.calibrate import TensorsData

from ..onnx_segmentor import open_session
from .onnx_quant import conv_names, quantize_model

Progress = Callable[[], None]


@dataclass(frozen=True)
class LayerSensitivity:
    """How much quantizing one conv alone moves the logits.

    Attributes:
        name: The Conv node (named after its PyTorch module).
        relative_error: ``||int8 - float|| / ||float||`` of the logits, summed over the
            calibration images.
    """

    name: str
    relative_error: float


def run_model(model: onnx.ModelProto, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The model's first output for each image (ONNX Runtime, CPU)."""
    session = open_session(model.SerializeToString())
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name
    return [session.run([output_name], {input_name: image})[0] for image in images]


def relative_error(outputs: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> float:
    """``||outputs - references|| / ||references||`` over all arrays together (float64)."""
    noise = sum(float(np.sum((o.astype(np.float64) - r) ** 2)) for o, r in zip(outputs, references))
    signal = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in references)
    return math.sqrt(noise / signal) if signal > 0 else math.inf


def rank_convs(
    model: onnx.ModelProto,
    ranges: TensorsData,
    per_channel: bool,
    images: Sequence[np.ndarray],
    progress: Progress | None = None,
) -> list[LayerSensitivity]:
    """Every Conv of a prepared float model, most sensitive first.

    Args:
        ranges: The calibration ranges of ``model``.
        per_channel: As the final quantization will be.
        images: The calibration images.
        progress: Called once per conv.
    """
    references = run_model(model, images)
    ranking = []
    for name in conv_names(model):
        quantized = quantize_model(model, ranges, per_channel, nodes_to_quantize=[name])
        ranking.append(
            LayerSensitivity(name, relative_error(run_model(quantized, images), references))
        )
        if progress is not None:
            progress()
    return sorted(ranking, key=lambda layer: layer.relative_error, reverse=True)
