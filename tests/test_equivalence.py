"""The one fusion criterion (repvgg_seg/equivalence.py): round-off passes, broken fusions fail.

bf16 autocast on CPU stands in for the reduced precision (fp16, TF32) of GPU runs: the
checks must switch it off, pass for a correct fusion and fail for a broken one.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from repvgg_seg.equivalence import (
    ROUNDOFF_RTOL,
    FusionMismatchError,
    compare_logits,
    strict_float32,
)
from repvgg_seg.models.classifier import RepVGGClassifier
from repvgg_seg.pretrain import engine, train
from repvgg_seg.reparam import reparameterize_model

from helpers import randomize_bn


def tied_logits(seed: int = 0) -> torch.Tensor:
    """``1,5,16,16`` logits whose classes 0 and 1 tie exactly at every pixel and win."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, 5, 16, 16, generator=generator)
    logits[:, 1] = logits[:, 0] = 10 + torch.rand(1, 16, 16, generator=generator)
    return logits


def test_near_ties_flipped_by_round_off_pass():
    reference = tied_logits()
    candidate = reference.clone()
    candidate[:, 1] += 1e-6 * reference.abs().max()  # float32-sized, flips every pixel
    agreement = compare_logits(reference, candidate)
    assert agreement.changed == 256
    assert agreement.changed_beyond_margin == 0
    assert agreement.near_tie_changes == 256
    assert agreement.ok
    agreement.check("round-off")  # does not raise


def test_changed_class_beyond_the_margin_fails():
    reference = tied_logits()
    reference[:, 1] -= 1.0  # class 0 now wins by 1.0 everywhere
    candidate = reference.clone()
    candidate[0, :, 3, 4] = candidate[0, :, 3, 4].flip(0)  # one pixel's class really changed
    agreement = compare_logits(reference, candidate)
    assert agreement.changed == 1 and agreement.changed_beyond_margin == 1
    assert not agreement.ok
    with pytest.raises(FusionMismatchError, match="1 beyond the round-off margin"):
        agreement.check("fused vs unfused")


def test_logits_moved_beyond_round_off_fail_without_any_changed_class():
    reference = tied_logits()
    reference[:, 1] -= 1.0
    candidate = reference + 50 * ROUNDOFF_RTOL * reference.abs().max()
    agreement = compare_logits(reference, candidate)
    assert agreement.changed == 0
    assert not agreement.ok


def test_merge_keeps_the_worst_batch():
    good = compare_logits(torch.ones(2, 3), torch.ones(2, 3))
    bad = compare_logits(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
    merged = good.merge(bad)
    assert (merged.changed, merged.changed_beyond_margin, merged.num_compared) == (1, 1, 3)
    assert not merged.ok and good.ok


def test_strict_float32_switches_off_reduced_precision_and_restores_it():
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("medium")
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with strict_float32():
                assert not torch.is_autocast_enabled("cpu")
                assert not torch.backends.cuda.matmul.allow_tf32
                assert not torch.backends.cudnn.allow_tf32
                assert torch.get_float32_matmul_precision() == "highest"
                assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.float32
            assert torch.is_autocast_enabled("cpu")
        assert torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved[0]
        torch.backends.cudnn.allow_tf32 = saved[1]
        torch.set_float32_matmul_precision(saved[2])


@pytest.fixture(scope="module")
def classifier_and_loader():
    torch.manual_seed(0)
    model = randomize_bn(RepVGGClassifier("A0", num_classes=10), seed=1).eval()
    images = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    loader = DataLoader(TensorDataset(images, torch.arange(12) % 10), batch_size=4)
    return model, loader


def broken_copy(fused: torch.nn.Module) -> torch.nn.Module:
    """A fusion bug as it would look: one fused conv's bias off by 10 % of its size."""
    broken = copy.deepcopy(fused)
    conv = broken.backbone.stages[2][0].fused_conv
    with torch.no_grad():
        conv.bias.add_(0.1 * conv.bias.abs().max())
    return broken


def test_classifier_check_under_bf16_autocast_passes_correct_and_catches_broken_fusion(
    classifier_and_loader,
):
    model, loader = classifier_and_loader
    fused = reparameterize_model(copy.deepcopy(model), inplace=True)
    device = torch.device("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        good = engine.compare_fused(model, fused, loader, device)["agreement"]
        bad = engine.compare_fused(model, broken_copy(fused), loader, device)["agreement"]
        # The reason for strict_float32: compared in bf16, even the correct fusion fails.
        in_bf16 = compare_logits(model(loader.dataset.tensors[0]), fused(loader.dataset.tensors[0]))
    assert good.ok and good.num_compared == 12, good.describe("images")
    assert good.max_relative_diff < 1e-5
    assert not bad.ok
    assert not in_bf16.ok


def test_pretraining_end_check_refuses_a_broken_fusion_and_writes_no_deployed_file(
    classifier_and_loader, tmp_path, monkeypatch, caplog
):
    model, loader = classifier_and_loader
    ctx = train.DistContext(device=torch.device("cpu"))

    def broken_reparameterize(module, inplace=False):
        return broken_copy(reparameterize_model(module, inplace=inplace))

    result = train._finish_with_deploy(model, loader, ctx, "A0", 10, tmp_path)
    assert result["agreement"].ok
    assert (tmp_path / train.ckpt.DEPLOY_NAME).is_file()
    (tmp_path / train.ckpt.DEPLOY_NAME).unlink()

    monkeypatch.setattr(train, "reparameterize_model", broken_reparameterize)
    with caplog.at_level(logging.INFO), pytest.raises(FusionMismatchError, match="classifier"):
        train._finish_with_deploy(model, loader, ctx, "A0", 10, tmp_path)
    assert not (tmp_path / train.ckpt.DEPLOY_NAME).exists()
