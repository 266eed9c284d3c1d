"""The ONNX export of a deployed segmentor (repvgg_seg.deploy.onnx_export): the graph computes
what PyTorch does at any batch and size, and its shape-generic ops what they replace."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from mmseg.models.decode_heads.psp_head import PPM

import repvgg_seg  # noqa: F401  (registers the RepVGG backbone)
from repvgg_seg.deploy import compare_onnx, deploy_segmentor, export_onnx
from repvgg_seg.deploy.onnx_export import (
    ShapeGenericAdaptiveAvgPool2d,
    ShapeGenericPPM,
    resize_bilinear_by_matmul,
)
from repvgg_seg.loader import build_segmentor

from helpers import SYNTHETIC_CONFIG, randomize_bn


def test_onnx_export_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    model = randomize_bn(build_segmentor(SYNTHETIC_CONFIG).eval(), seed=3)
    deploy_segmentor(model, torch.randn(1, 3, 32, 32))
    path = tmp_path / "model.onnx"
    export_onnx(model, path, torch.randn(1, 3, 64, 64))
    inputs = [torch.randn(1, 3, 64, 64), torch.randn(2, 3, 48, 88)]
    for agreement in compare_onnx(path, model, inputs):
        assert agreement.max_relative_diff < 1e-5
        assert agreement.changed == 0


@pytest.mark.parametrize("align_corners", [False, True])
def test_the_exports_shape_generic_ops_compute_what_they_replace(align_corners):
    """Bilinear resizing and adaptive pooling as matrix products (what the ONNX graph runs)
    equal PyTorch's at sizes that do not divide, upsampling and downsampling; the pyramid
    pooling keeps its branches under their names."""
    torch.manual_seed(0)
    for shape, size in [
        ((2, 3, 7, 9), (20, 13)),
        ((1, 2, 64, 128), (5, 1)),
        ((1, 1, 1, 3), (4, 4)),
    ]:
        x = torch.randn(shape)
        expected = F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)
        torch.testing.assert_close(resize_bilinear_by_matmul(x, size, align_corners), expected)
    x = torch.randn(2, 8, 23, 37)
    for bins in (1, 2, 3, 6, (4, 5)):
        pool = ShapeGenericAdaptiveAvgPool2d(bins)
        torch.testing.assert_close(pool(x), F.adaptive_avg_pool2d(x, bins))
    act = {"type": "ReLU"}
    ppm = PPM((1, 2, 3, 6), 8, 4, None, {"type": "BN"}, act, align_corners).eval()
    randomize_bn(ppm, seed=1)
    generic = ShapeGenericPPM(copy.deepcopy(ppm))
    assert list(generic.state_dict()) == list(ppm.state_dict())
    with torch.no_grad():
        for mine, theirs in zip(generic(x), ppm(x), strict=True):
            torch.testing.assert_close(mine, theirs)
