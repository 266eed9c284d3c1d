"""ONNX export of a deployed segmentor, checked with ONNX Runtime."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from mmseg.models.segmentors import EncoderDecoder
from torch import nn

from ..atomic_io import write_atomically
from ..equivalence import Agreement, compare_logits
from ..errors import UsageError
from ..onnx_session import open_session
from .fold import replace_submodule
from .winograd import disable_winograd


class SegmentorLogits(nn.Module):
    """Normalized ``N,3,H,W`` image to per-pixel logits at the input size: the ONNX graph."""

    def __init__(self, segmentor: EncoderDecoder) -> None:
        super().__init__()
        self.segmentor = segmentor

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.segmentor(image, mode="tensor")
        return F.interpolate(
            logits,
            size=image.shape[2:],
            mode="bilinear",
            align_corners=self.segmentor.align_corners,
        )


class ShapeGenericAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two matrix products, so ONNX graphs keep dynamic sizes.

    The exporter's own decomposition bakes the example's bin indices into the graph (wrong
    results at other sizes). Here bin ``i`` of ``n`` over ``L`` pixels spans
    ``[floor(i L / n), ceil((i + 1) L / n))``, exactly PyTorch's rule, built from the shape.
    """

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        super().__init__()
        size = output_size if isinstance(output_size, tuple) else (output_size, output_size)
        if None in size:
            raise UsageError(f"output_size {output_size} with None is not supported.")
        self.output_size = size

    @staticmethod
    def _bins(length: int, bins: int, like: torch.Tensor) -> torch.Tensor:
        index = torch.arange(bins, device=like.device)
        start = (index * length) // bins
        end = ((index + 1) * length + bins - 1) // bins
        pixels = torch.arange(length, device=like.device)
        inside = (pixels >= start[:, None]) & (pixels < end[:, None])
        return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self._bins(x.shape[-2], self.output_size[0], x)
        cols = self._bins(x.shape[-1], self.output_size[1], x)
        return rows @ x @ cols.transpose(0, 1)


def export_onnx(
    segmentor: EncoderDecoder,
    path: str | Path,
    example_input: torch.Tensor,
    opset: int = 18,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Exports ``SegmentorLogits(segmentor)`` to ONNX with dynamic batch, height and width.

    ``metadata`` goes into the model's ``metadata_props`` (deploy records its ``deploy_id``).

    Written by :func:`repvgg_seg.atomic_io.write_atomically`: a failed export or write leaves
    whatever ``path`` held before, and no temporary file.
    """
    if opset < 17:
        raise UsageError(f"opset {opset} is too old; use 17 or newer.")
    module = SegmentorLogits(copy.deepcopy(segmentor)).eval()
    # ONNX runtimes pick their own conv algorithms; the graph gets plain convs.
    disable_winograd(module)
    for name, sub in list(module.named_modules()):
        if isinstance(sub, nn.AdaptiveAvgPool2d):
            replace_submodule(module, name, ShapeGenericAdaptiveAvgPool2d(sub.output_size))
    dim = torch.export.Dim.DYNAMIC
    program = torch.onnx.export(
        module,
        (example_input,),
        dynamo=True,
        opset_version=opset,
        verbose=False,  # its "[torch.onnx] ..." progress lines are not for users
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes={"image": {0: dim, 2: dim, 3: dim}},
    )
    for key, value in (metadata or {}).items():
        entry = program.model_proto.metadata_props.add()
        entry.key, entry.value = key, value
    # One protobuf with the weights inside (segmentors are far below protobuf's 2 GB limit).
    write_atomically(path, lambda file: file.write(program.model_proto.SerializeToString()))


def compare_onnx(
    path: str | Path, segmentor: EncoderDecoder, inputs: Sequence[torch.Tensor]
) -> list[Agreement]:
    """Runs the ONNX file with ONNX Runtime (CPU, :func:`repvgg_seg.onnx_session.open_session`)
    and PyTorch on each input and compares."""
    session = open_session(path)
    module = SegmentorLogits(segmentor).eval()
    agreements = []
    with torch.no_grad():
        for image in inputs:
            (onnx_logits,) = session.run(["logits"], {"image": image.numpy()})
            agreements.append(compare_logits(module(image), torch.from_numpy(onnx_logits)))
    return agreements
