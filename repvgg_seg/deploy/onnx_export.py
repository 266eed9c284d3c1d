"""ONNX export of a deployed segmentor, checked with ONNX Runtime."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from mmseg.models.decode_heads.psp_head import PPM
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
        return self.resize(logits, image.shape[2:])

    def resize(self, logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return F.interpolate(
            logits, size=size, mode="bilinear", align_corners=self.segmentor.align_corners
        )


class ShapeGenericSegmentorLogits(SegmentorLogits):
    """:class:`SegmentorLogits` whose last resize is :func:`resize_bilinear_by_matmul`.

    What :func:`export_onnx` exports. ONNX's ``Resize`` runs, in OpenVINO's CPU plugin, in
    the channel-blocked layout of the conv before it and then needs a reorder of the whole
    ``N,classes,H,W`` output to the graph's plain layout: on an INT8 PSPNet at 512 x 1024
    (19 classes) the two took 21 ms of 236, the matrix products 10.
    """

    def resize(self, logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return resize_bilinear_by_matmul(logits, size, self.segmentor.align_corners)


def linear_interpolation_matrix(
    out_length: int, in_length: int, align_corners: bool, like: torch.Tensor
) -> torch.Tensor:
    """The ``out_length x in_length`` matrix of PyTorch's 1-D linear interpolation.

    Row ``i`` holds the weights of output ``i``: ``1 - t`` and ``t`` on the two input
    positions around its source coordinate (``i * (in - 1) / (out - 1)`` with
    ``align_corners``, else ``(i + 0.5) * in / out - 0.5`` clamped at 0), built from the
    shapes, so that ONNX graphs keep dynamic sizes.
    """
    position = torch.arange(out_length, device=like.device).to(like.dtype)
    if align_corners:
        source = position * ((in_length - 1) / max(out_length - 1, 1))
    else:
        source = ((position + 0.5) * (in_length / out_length) - 0.5).clamp(min=0)
    low = source.floor().clamp(max=in_length - 1)
    high = (low + 1).clamp(max=in_length - 1)
    weight = (source - low)[:, None]
    inputs = torch.arange(in_length, device=like.device).to(like.dtype)[None, :]
    at_low = (inputs == low[:, None]).to(like.dtype)
    at_high = (inputs == high[:, None]).to(like.dtype)
    return at_low * (1 - weight) + at_high * weight


def resize_bilinear_by_matmul(
    x: torch.Tensor, size: Sequence[int], align_corners: bool
) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear")`` as two matrix products (ONNX ``MatMul``):
    along the width, then the height (the fewer multiply-accumulates when upsampling)."""
    rows = linear_interpolation_matrix(size[0], x.shape[-2], align_corners, x)
    cols = linear_interpolation_matrix(size[1], x.shape[-1], align_corners, x)
    return rows @ (x @ cols.transpose(0, 1))


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

    def pooling_matrix(self, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        """The ``bins x (height * width)`` matrix that pools a row-major ``height x width``
        map into this pool's bins (row-major too)."""
        rows = self._bins(height, self.output_size[0], like)
        cols = self._bins(width, self.output_size[1], like)
        return (rows[:, None, :, None] * cols[None, :, None, :]).reshape(-1, height * width)


class ShapeGenericPPM(nn.ModuleList):
    """mmseg's pyramid pooling module (``PPM``: PSPNet's, UPerNet's) with every scale's pooled
    map from one matrix product of the channels-last input.

    Holds the same branches under the same names as the module it replaces (so the ONNX
    convs keep their module names). The per-scale pooling of :class:`ShapeGenericAdaptiveAvgPool2d`
    reads the whole input once per scale, in the plain layout; in OpenVINO's CPU plugin that
    cost a dequantization and a reorder of the backbone's output to float32 plus four
    matrix products (35 ms of an INT8 PSPNet's 236 at 512 x 1024); this reads it once.
    """

    def __init__(self, ppm: PPM) -> None:
        super().__init__(list(ppm))
        self.align_corners = ppm.align_corners
        self.pools = [ShapeGenericAdaptiveAvgPool2d(scale) for scale in ppm.pool_scales]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, w = x.shape[2:]
        pooling = torch.cat([pool.pooling_matrix(h, w, x) for pool in self.pools])
        pooled = pooling @ x.permute(0, 2, 3, 1).flatten(1, 2)  # N, bins of all scales, C
        outs, start = [], 0
        for pool, branch in zip(self.pools, self):
            rows, cols = pool.output_size
            part = pooled[:, start : start + rows * cols].unflatten(1, (rows, cols))
            start += rows * cols
            conv = branch[1](part.permute(0, 3, 1, 2))  # branch[0] is the pool
            outs.append(
                F.interpolate(conv, size=(h, w), mode="bilinear", align_corners=self.align_corners)
            )
        return outs


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
    module = ShapeGenericSegmentorLogits(copy.deepcopy(segmentor)).eval()
    # ONNX runtimes pick their own conv algorithms; the graph gets plain convs.
    disable_winograd(module)
    for name, sub in list(module.named_modules()):
        if isinstance(sub, PPM):
            replace_submodule(module, name, ShapeGenericPPM(sub))
    for name, sub in list(module.named_modules()):
        if isinstance(sub, nn.AdaptiveAvgPool2d):
            replace_submodule(module, name, ShapeGenericAdaptiveAvgPool2d(sub.output_size))
    dim = torch.export.Dim.DYNAMIC
    # Traced with a batch of 2: torch.export takes a dimension it sees at size 1 for a
    # constant 1, and the pyramid pooling's reshapes would carry it into the graph.
    example = example_input[:1].expand(2, *example_input.shape[1:])
    program = torch.onnx.export(
        module,
        (example,),
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
