"""The benchmark runs on a tiny input and reports self-consistent numbers (no timing asserts)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import repvgg_seg  # noqa: F401  (registers the RepVGG backbone)
from repvgg_seg.benchmark import (
    BenchmarkSettings,
    Case,
    count_macs,
    deployed_copy,
    format_table,
    plain_repvgg,
    run_benchmark,
)
from repvgg_seg.deploy import SegmentorLogits, build_segmentor
from repvgg_seg.models import RepVGG

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = ROOT / "configs" / "pspnet_repvgg_a0_synthetic.py"
TINY = BenchmarkSettings(height=32, width=48, batch=2, warmup=1, rounds=3)


def test_count_macs_of_one_conv():
    conv = nn.Conv2d(8, 16, 3, padding=2, dilation=2, groups=2)
    assert count_macs(conv, torch.randn(1, 8, 10, 12)) == 16 * 10 * 12 * 4 * 9


def test_plain_repvgg_is_our_deployed_backbone():
    ours = RepVGG("B1g2", dilation_mode="fast", out_indices=(4,), deploy=True).eval()
    plain = plain_repvgg("B1g2", "fast").eval()
    convs = [m for m in plain if isinstance(m, nn.Conv2d)]
    fused = [block.fused_conv for block in ours.modules() if hasattr(block, "fused_conv")]
    assert len(convs) == len(fused) == 28  # 1 + 4 + 6 + 16 + 1 layers
    for reference, conv in zip(fused, convs):
        for name in ("stride", "padding", "dilation", "groups"):
            assert getattr(conv, name) == getattr(reference, name)
        conv.load_state_dict(reference.state_dict())
    image = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(plain(image), ours(image)[0])


def test_benchmark_reports_consistent_numbers():
    trained = build_segmentor(SYNTHETIC)
    cases = [
        Case("train", SegmentorLogits(trained)),
        Case("deploy", SegmentorLogits(deployed_copy(trained))),
        Case("plain", plain_repvgg("A0")),
    ]
    results = run_benchmark(cases, TINY)
    assert [r.name for r in results] == ["train", "deploy", "plain"]
    assert results[0].relative_speed == 1.0
    for result, case in zip(results, cases):
        assert len(case.times) == TINY.rounds
        assert result.min_ms <= result.median_ms <= result.max_ms
        assert math.isclose(result.images_per_s, TINY.batch * 1000 / result.median_ms)
        assert math.isclose(result.gmacs_per_s, result.gmacs * 1000 / result.median_ms)
        assert result.peak_memory_mb > 0
    train, deploy, _ = results
    # Fusion removes the 1x1 and BN work and parameters, never adds any.
    assert deploy.gmacs < train.gmacs and deploy.params_m < train.params_m
    assert math.isclose(deploy.relative_speed, train.median_ms / deploy.median_ms, rel_tol=1e-9)
    assert format_table(results).count("\n") == len(results) + 1


def test_benchmark_cli_writes_csv_and_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "tools_benchmark", ROOT / "tools" / "benchmark.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.main(
        [
            str(SYNTHETIC),
            "--size", "32", "32", "--rounds", "2", "--channels-last",
            "--plain-repvgg", "A0:fast",
            "--csv", str(tmp_path / "speed.csv"),
            "--json", str(tmp_path / "speed.json"),
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "speed.csv").open()))
    saved = json.loads((tmp_path / "speed.json").read_text())
    names = [row["name"] for row in rows]
    assert names == [
        "pspnet_repvgg_a0_synthetic (train)",
        "pspnet_repvgg_a0_synthetic (deploy)",
        "pspnet_repvgg_a0_synthetic (deploy, winograd)",
        "plain RepVGG-A0-fast",
    ]
    assert [r["name"] for r in saved["results"]] == names
    assert saved["settings"]["channels_last"] is True
    for row, result in zip(rows, saved["results"]):
        assert float(row["median_ms"]) == pytest.approx(result["median_ms"])
        assert row["name"] in printed


def test_winograd_layer_benchmark_cli(capsys):
    spec = importlib.util.spec_from_file_location(
        "tools_benchmark_winograd", ROOT / "tools" / "benchmark_winograd.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.main(["16,24,12,20", "16,16,9,13,2,2", "--rounds", "2", "--warmup", "0"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 16,")]
    assert [row.split("|")[1].strip() for row in rows] == ["16,24,12,20,1,1", "16,16,9,13,2,2"]
    for row in rows:
        direct_ms, winograd_ms, speed_up, difference = row.split("|")[2:6]
        assert float(direct_ms) >= 0 and float(winograd_ms) >= 0
        assert float(speed_up.strip().rstrip("x")) > 0
        assert float(difference) < 1e-5
    with pytest.raises(SystemExit, match="divisible by groups"):
        tool.main(["16,15,8,8,2"])
