"""CUDA paths: the fusion checks under TF32 and fp16, deploy on the GPU, the GPU benchmark.

Skipped without CUDA (CI has none); ``tools/gpu_check.sh`` runs them on a GPU machine.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_benchmark import SYNTHETIC
from test_equivalence import broken_copy
from torch.utils.data import DataLoader, TensorDataset

import repvgg_seg  # noqa: F401  (registers the RepVGG backbone)
from repvgg_seg.benchmark import BenchmarkSettings, Case, run_benchmark
from repvgg_seg.deploy import SegmentorLogits, compare_on_tensor, deploy_segmentor
from repvgg_seg.loader import build_segmentor
from repvgg_seg.models.classifier import RepVGGClassifier
from repvgg_seg.pretrain.engine import compare_fused
from repvgg_seg.reparam import reparameterize_model

from helpers import randomize_bn

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
CUDA = torch.device("cuda")


@pytest.fixture
def tf32_on():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_classifier_check_under_fp16_autocast_and_tf32(tf32_on):
    torch.manual_seed(0)
    model = randomize_bn(RepVGGClassifier("A0", num_classes=10), seed=1).eval().to(CUDA)
    fused = reparameterize_model(copy.deepcopy(model), inplace=True)
    images = torch.randn(64, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    loader = DataLoader(TensorDataset(images, torch.arange(64) % 10), batch_size=16)
    with torch.autocast("cuda", dtype=torch.float16):
        good = compare_fused(model, fused, loader, CUDA)["agreement"]
        bad = compare_fused(model, broken_copy(fused), loader, CUDA)["agreement"]
    assert good.ok, good.describe("images")
    assert good.max_relative_diff < 1e-5
    assert not bad.ok
    # The caller's precision settings are back.
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32


def test_deployed_segmentor_on_cuda_under_tf32(tf32_on):
    trained = randomize_bn(build_segmentor(SYNTHETIC), seed=3).eval().to(CUDA)
    deployed = copy.deepcopy(trained)
    deploy_segmentor(deployed, torch.randn(1, 3, 64, 64, device=CUDA))
    with torch.autocast("cuda", dtype=torch.float16):
        agreement = compare_on_tensor(trained, deployed, torch.randn(2, 3, 256, 512))
    assert agreement.ok, agreement.describe()


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_benchmark_on_cuda_eager_and_graph(precision):
    model = SegmentorLogits(build_segmentor(SYNTHETIC))
    settings = BenchmarkSettings(
        height=128, width=256, batch=4, warmup=1, rounds=3, channels_last=True,
        precision=precision, device="cuda", tf32=False,
    )  # fmt: skip
    cases = [Case("eager", model, "eager"), Case("graph", model, "graph")]
    results = run_benchmark(cases, settings, matmul_rate=100.0)
    for result in results:
        assert result.median_ms > 0 and result.peak_memory_mb > 0
        assert result.matmul_pct == pytest.approx(result.tflops)  # 100 TFLOP/s reference
    assert results[0].gmacs == results[1].gmacs
