"""Winograd F(4x4, 3x3): equal to the direct conv up to float32 round-off, wherever it runs."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import repvgg_seg.deploy.winograd as winograd_module
import repvgg_seg.deploy.winograd_algorithm as algorithm
from repvgg_seg.deploy import (
    WinogradConv2d,
    compare_on_tensor,
    deploy_segmentor,
    disable_winograd,
    enable_winograd,
    winograd_applies,
)
from repvgg_seg.deploy.autotune import AUTOTUNER, ConvAutotuner
from repvgg_seg.deploy.winograd import transform_weight, winograd_conv2d, winograd_mode
from repvgg_seg.models import RepVGG
from repvgg_seg.reparam import reparameterize_model

from helpers import randomize_bn

# Round-off bound relative to the largest output: the transforms multiply by at most 8, so
# Winograd's float32 error is a few times the direct conv's (both are ~1e-6 here).
RELATIVE_TOLERANCE = 2e-5


def assert_matches_float64_conv(actual, x, weight, bias, padding, dilation, groups):
    expected = F.conv2d(
        x.double(),
        weight.double(),
        None if bias is None else bias.double(),
        padding=padding,
        dilation=dilation,
        groups=groups,
    )
    assert actual.shape == expected.shape
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual.double(), expected, rtol=0, atol=RELATIVE_TOLERANCE * scale)


@pytest.mark.parametrize(
    "batch, in_channels, out_channels, size, groups, dilation, padding",
    [
        (1, 16, 24, (16, 16), 1, 1, 1),  # whole tiles
        (2, 12, 8, (13, 17), 1, 1, 1),  # partial tiles, batch
        (1, 8, 8, (5, 3), 1, 1, 1),  # smaller than one tile
        (1, 16, 16, (21, 30), 2, 1, 1),  # grouped (B1g2's odd layers)
        (1, 16, 32, (19, 11), 4, 1, 1),  # grouped, out != in
        (2, 8, 8, (23, 29), 1, 2, 2),  # dilated: four sub-lattices
        (1, 8, 16, (25, 18), 2, 4, 4),  # dilated and grouped (fast mode's last layers)
        (1, 8, 8, (17, 19), 1, 3, 3),  # odd dilation, sizes not divisible by it
        (1, 8, 8, (12, 14), 1, 1, 0),  # no padding: output smaller than input
        (1, 8, 8, (12, 14), 1, 2, 3),  # padding larger than dilation
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_winograd_equals_direct_conv(
    batch, in_channels, out_channels, size, groups, dilation, padding, channels_last
):
    generator = torch.Generator().manual_seed(batch * 100 + in_channels + size[0])
    x = torch.randn(batch, in_channels, *size, generator=generator)
    weight = torch.randn(out_channels, in_channels // groups, 3, 3, generator=generator)
    bias = torch.randn(out_channels, generator=generator)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = winograd_conv2d(x, transform_weight(weight, groups), bias, padding, dilation)
    assert_matches_float64_conv(out, x, weight, bias, padding, dilation, groups)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=memory_format)


def test_winograd_without_bias():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 10, 9, generator=generator)
    weight = torch.randn(4, 8, 3, 3, generator=generator)
    out = winograd_conv2d(x, transform_weight(weight, 1), None, 1, 1)
    assert_matches_float64_conv(out, x, weight, None, 1, 1, 1)


def make_pair(in_channels=8, out_channels=8, **kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(in_channels, out_channels, 3, **kwargs)
    fast = copy.deepcopy(conv)
    fast.__class__ = WinogradConv2d
    return conv, fast


def count_winograd_calls(monkeypatch) -> list:
    calls = []
    original = winograd_module.winograd_conv2d

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(winograd_module, "winograd_conv2d", spy)
    return calls


def test_module_takes_winograd_path_only_for_inference(monkeypatch):
    calls = count_winograd_calls(monkeypatch)
    conv, fast = make_pair(padding=2, dilation=2, groups=2)
    x = torch.randn(2, 8, 11, 14)
    with torch.no_grad():
        assert_matches_float64_conv(fast(x), x, conv.weight, conv.bias, 2, 2, 2)
    assert len(calls) == 1

    # With autograd the ordinary conv runs, so gradients are the ordinary ones.
    x.requires_grad_(True)
    fast(x).sum().backward()
    conv(x).sum().backward()
    assert len(calls) == 1
    torch.testing.assert_close(fast.weight.grad, conv.weight.grad)

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast(x)
    with torch.no_grad():
        copy.deepcopy(fast).double()(x.double())
    assert len(calls) == 1


def test_transformed_weight_follows_weight_changes():
    conv, fast = make_pair()
    x = torch.randn(1, 8, 9, 9)
    with torch.no_grad():
        fast(x)
        conv.weight.mul_(-2)
        fast.weight.mul_(-2)
        assert_matches_float64_conv(fast(x), x, conv.weight, conv.bias, 0, 1, 1)
        fast.load_state_dict(nn.Conv2d(8, 8, 3).state_dict())
        expected_weight, expected_bias = fast.weight.clone(), fast.bias.clone()
        assert_matches_float64_conv(fast(x), x, expected_weight, expected_bias, 0, 1, 1)


def test_only_eligible_convs_are_converted_and_state_dict_is_unchanged():
    model = nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1),  # eligible
        nn.Conv2d(8, 8, 1),  # 1x1
        nn.Conv2d(8, 8, 3, stride=2, padding=1),  # strided
        nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"),  # not zero padding
        nn.Conv2d(8, 8, 3, padding=(1, 2), dilation=(1, 2)),  # anisotropic
        nn.Conv2d(8, 16, 3, padding=2, dilation=2, groups=2),  # eligible at 4 per group
        nn.Conv2d(16, 8, 3, padding=1, groups=8),  # 2 per group: below the threshold
    )
    keys = list(model.state_dict())
    converted = enable_winograd(model, min_channels_per_group=4)
    assert converted == ["0", "5"]
    assert [type(m) is WinogradConv2d for m in model] == [
        True, False, False, False, False, True, False,
    ]  # fmt: skip
    assert list(model.state_dict()) == keys
    assert not winograd_applies(nn.Conv2d(512, 512, 3, padding=1, groups=4))  # 128 per group
    assert winograd_applies(nn.Conv2d(512, 512, 3, padding=1, groups=2))
    assert disable_winograd(model) == 2
    assert all(type(m) is not WinogradConv2d for m in model)


def test_deployed_repvgg_with_winograd_matches_training_time_model():
    """A whole fast-mode RepVGG (dilated last layers, grouped layers) with random BN stats."""
    model = randomize_bn(RepVGG("B1g2", dilation_mode="fast", out_indices=(3, 4)), seed=4)
    model.eval()
    deployed = reparameterize_model(model, inplace=False)
    # 'on': the check is about the Winograd path ('auto' may keep the direct conv here).
    converted = enable_winograd(deployed, min_channels_per_group=64, mode="on")
    assert len(converted) > 10
    image = torch.randn(1, 3, 72, 88)
    with torch.no_grad():
        for expected, actual in zip(model(image), deployed(image)):
            scale = expected.abs().max().item()
            torch.testing.assert_close(actual, expected, rtol=0, atol=RELATIVE_TOLERANCE * scale)


def test_deploy_segmentor_then_winograd_changes_no_pixel():
    from test_deploy import build, pspnet_cfg

    trained = randomize_bn(build(pspnet_cfg("resnet18_d8")), seed=5)
    deployed = copy.deepcopy(trained)
    deploy_segmentor(deployed, torch.randn(1, 3, 32, 32))
    assert len(enable_winograd(deployed, min_channels_per_group=16, mode="on")) >= 4
    agreement = compare_on_tensor(trained, deployed, torch.randn(2, 3, 72, 104))
    assert agreement.changed == 0
    assert agreement.max_relative_diff < RELATIVE_TOLERANCE


def test_winograd_in_input_and_output_chunks(monkeypatch):
    """Wide inputs (the PSP head's 4096 channels) are transformed in chunks and summed;
    wide outputs (B1g2's 2048) are computed in chunks from the kept input chunks."""
    monkeypatch.setattr(algorithm, "CHUNK_BYTES", 1)  # chunks of 64 channels
    monkeypatch.setattr(algorithm, "OUTPUT_CHUNK", 4)  # 12 outputs per group: 3 chunks
    assert algorithm._output_chunks(12) == [(0, 4), (4, 8), (8, 12)]
    assert algorithm._output_chunks(8) == [(0, 8)]
    assert algorithm._channel_chunks(136, tiles=9, element_size=4) == [
        (0, 64),
        (64, 128),
        (128, 136),
    ]
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(2, 272, 9, 11, generator=generator)
    weight = torch.randn(24, 136, 3, 3, generator=generator) / 30
    bias = torch.randn(24, generator=generator)
    out = winograd_conv2d(x, transform_weight(weight, 2), bias, 2, 2)
    assert_matches_float64_conv(out, x, weight, bias, 2, 2, 2)


class FakeTimer:
    """Seconds per call from a table (function -> seconds), counting the timed calls."""

    def __init__(self, seconds: dict) -> None:
        self.seconds, self.calls = seconds, 0

    def __call__(self, run) -> float:
        self.calls += 1
        return self.seconds[run]


def test_autotuner_picks_the_faster_path_once_per_shape():
    def direct():
        return None

    def winograd():
        return None

    timer = FakeTimer({direct: 0.072, winograd: 0.077})  # 512->512 dilation 4 on AVX-512
    tuner = ConvAutotuner(timer=timer, repeats=2)
    assert not tuner.use_winograd("dilated", direct, winograd)
    assert timer.calls == 4  # two timed calls of each path
    assert not tuner.use_winograd("dilated", direct, winograd)
    assert timer.calls == 4  # cached: the shape is not timed again
    timer.seconds = {direct: 0.706, winograd: 0.544}  # the PSP head's 4096->512
    assert tuner.use_winograd("head", direct, winograd)
    assert tuner.decisions == {"dilated": (0.072, 0.077), "head": (0.706, 0.544)}


@pytest.mark.parametrize("winograd_faster", [True, False])
def test_auto_mode_runs_the_path_the_autotuner_found_faster(monkeypatch, winograd_faster):
    calls = count_winograd_calls(monkeypatch)
    conv, fast = make_pair(padding=1)
    fast.winograd_mode = "auto"

    def timer(run) -> float:
        # Winograd's call is the one that reaches winograd_conv2d (the spy counts it).
        before = len(calls)
        run()
        took_winograd = len(calls) > before
        return 1.0 if took_winograd == winograd_faster else 2.0

    monkeypatch.setattr(AUTOTUNER, "timer", timer)
    monkeypatch.setattr(AUTOTUNER, "decisions", {})
    x = torch.randn(1, 8, 12, 10)
    with torch.no_grad():
        for _ in range(2):
            calls.clear()
            assert_matches_float64_conv(fast(x), x, conv.weight, conv.bias, 1, 1, 1)
    assert len(AUTOTUNER.decisions) == 1
    assert len(calls) == (1 if winograd_faster else 0)  # the second pass: no timing, one path
    [(direct_seconds, winograd_seconds)] = AUTOTUNER.decisions.values()
    assert (winograd_seconds < direct_seconds) == winograd_faster


def test_winograd_modes():
    assert [winograd_mode(v) for v in (True, False, "on", "off", "auto")] == [
        "auto", "off", "on", "off", "auto",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="winograd must be one of"):
        winograd_mode("fast")
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))
    assert enable_winograd(model, min_channels_per_group=4, mode="off") == []
    assert enable_winograd(model, min_channels_per_group=4, mode="auto") == ["0", "1"]
    assert [m.winograd_mode for m in model] == ["auto", "auto"]
    assert copy.deepcopy(model)[0].winograd_mode == "auto"
    disable_winograd(model)
    assert not hasattr(model[0], "winograd_mode")
