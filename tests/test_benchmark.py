"""The benchmark runs on a tiny input and reports self-consistent numbers (no timing asserts)."""

from __future__ import annotations

import copy
import csv
import json
import math
import statistics
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from torch import nn

import repvgg_seg  # noqa: F401  (registers the RepVGG backbone)
from repvgg_seg.benchmark import (
    BenchmarkRequest,
    BenchmarkSettings,
    Case,
    CpuPeaks,
    CpuPeakSampler,
    RuntimeRunners,
    build_cases,
    check_report_paths,
    count_macs,
    cpu_info,
    deployed_copy,
    describe_machine,
    format_table,
    make_forward,
    parse_choices,
    plain_repvgg,
    prepare_module,
    run_benchmark,
    settings_for_device,
)
from repvgg_seg.deploy import SegmentorLogits
from repvgg_seg.errors import UsageError
from repvgg_seg.loader import build_segmentor
from repvgg_seg.models import RepVGG

from helpers import load_tool, one_error_line, run_script, tool_exit

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
    tool = load_tool("benchmark")
    tool.main(
        [
            str(SYNTHETIC),
            "--size", "32", "32", "--rounds", "2", "--channels-last",
            "--plain-repvgg", "A0:fast", "--peak-size", "64",
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
        "pspnet_repvgg_a0_synthetic (deploy, winograd auto)",
        "plain RepVGG-A0-fast",
    ]
    assert [r["name"] for r in saved["results"]] == names
    assert saved["settings"]["channels_last"] is True
    for row, result in zip(rows, saved["results"]):
        assert float(row["median_ms"]) == pytest.approx(result["median_ms"])
        assert row["name"] in printed
    # A later run may replace what this one wrote (and nothing else: see below).
    check_report_paths(tmp_path / "speed.csv", tmp_path / "speed.json")


def test_winograd_layer_benchmark_cli(capsys):
    tool = load_tool("benchmark_winograd")
    tool.main(["16,24,12,20", "16,16,9,13,2,2", "--rounds", "2", "--warmup", "0"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 16,")]
    assert [row.split("|")[1].strip() for row in rows] == ["16,24,12,20,1,1", "16,16,9,13,2,2"]
    for row in rows:
        direct_ms, winograd_ms, speed_up, difference = row.split("|")[2:6]
        assert float(direct_ms) >= 0 and float(winograd_ms) >= 0
        assert float(speed_up.strip().rstrip("x")) > 0
        assert float(difference) < 1e-5
    with pytest.raises(UsageError, match="divisible by groups"):
        tool.main(["16,15,8,8,2"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU-only host")
def test_cuda_settings_are_refused_without_a_gpu():
    with pytest.raises(UsageError, match="sees no CUDA GPU here; run with --device cpu"):
        BenchmarkSettings(device="cuda")
    with pytest.raises(UsageError, match="no CUDA GPU"):
        settings_for_device("cuda")


def test_request_picks_cpu_defaults_and_builds_its_cases():
    cpu = settings_for_device("cpu", precision="bf16")
    assert (cpu.batch, cpu.device, cpu.precision, cpu.autocast, cpu.tf32) == (
        1, "cpu", "bf16", False, None
    )  # fmt: skip
    assert not cpu.is_cuda and cpu.dtype == torch.bfloat16
    with pytest.raises(UsageError, match="--tf32 applies to CUDA"):
        settings_for_device("cpu", tf32=True)
    with pytest.raises(UsageError, match="batch must be at least 1, got 0"):
        settings_for_device("cpu", batch=0)  # not silently the default
    with pytest.raises(UsageError, match="unknown \\['graphs'\\]"):
        parse_choices("eager,graphs", ("eager", "graph"), "--treatments")
    configs = {"synthetic": Config.fromfile(SYNTHETIC)}
    with pytest.raises(UsageError, match="unknown \\['graphs'\\]"):
        BenchmarkRequest(cpu, configs, treatments=("graphs",))
    with pytest.raises(UsageError, match="runtimes other than torch"):
        BenchmarkRequest(cpu, configs, runtimes=("onnxruntime",), part="backbone")
    with pytest.raises(UsageError, match="unknown dilation mode 'fastest'"):
        BenchmarkRequest(cpu, plain_repvgg=("A0:fastest",))
    with pytest.raises(UsageError, match="Nothing to benchmark"):
        BenchmarkRequest(cpu)
    request = BenchmarkRequest(cpu, configs, variants=("deploy",), treatments=("eager", "compile"))
    cases = build_cases(request)
    assert [(c.name, c.treatment) for c in cases] == [
        ("synthetic (deploy) [eager]", "eager"),
        ("synthetic (deploy) [compile]", "compile"),
    ]
    assert cases[0].module is cases[1].module  # one model, two treatments


def test_cpu_run_casts_to_the_precision_and_refuses_cuda_graphs():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    settings = BenchmarkSettings(height=16, width=16, batch=2, warmup=0, rounds=2, precision="bf16")
    module = prepare_module(conv, settings)
    assert module[0].weight.dtype == torch.bfloat16
    image = torch.randn(2, 3, 16, 16, dtype=torch.bfloat16)
    assert make_forward(module, image, "eager", settings)().dtype == torch.bfloat16
    with pytest.raises(ValueError, match="needs a CUDA device"):
        make_forward(module, image, "graph", settings)
    autocast = BenchmarkSettings(height=16, width=16, precision="bf16", autocast=True)
    fp32_module = prepare_module(nn.Conv2d(3, 8, 3), autocast)
    assert fp32_module.weight.dtype == torch.float32
    out = make_forward(fp32_module, torch.randn(1, 3, 16, 16), "eager", autocast)()
    assert out.dtype == torch.bfloat16  # reached by autocast, weights untouched
    [result] = run_benchmark([Case("conv", conv)], settings)
    assert result.matmul_pct is None and result.tflops == pytest.approx(
        2 * result.gmacs_per_s / 1000
    )


def test_machine_header_is_read_from_proc_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Example CPU 9000\nflags\t\t: fpu sse2 avx2 fma avx512f\n"
        "processor\t: 1\nmodel name\t: Example CPU 9000\nflags\t\t: fpu\n"
    )
    assert cpu_info(str(cpuinfo)) == ("Example CPU 9000", ["avx2", "fma", "avx512f"])
    assert cpu_info(str(tmp_path / "missing")) == ("unknown", [])
    header = describe_machine(BenchmarkSettings())
    assert torch.backends.cpu.get_cpu_capability() in header
    assert cpu_info()[0] in header


def test_cpu_peaks_and_each_rows_share_of_its_precisions_peak():
    peaks = CpuPeakSampler(matmul_size=64, conv_channels=8, conv_size=8, repeats=1).sample()
    rates = peaks.by_precision()
    assert set(rates) == {"fp32", "bf16", "int8"} and min(rates.values()) > 0
    assert rates["fp32"] == pytest.approx(2 * max(peaks.fp32_matmul, peaks.fp32_conv) / 1000)
    assert "int8 matmul" in peaks.describe() and "bf16 matmul" in peaks.describe()
    assert "int8 3x3 conv" in peaks.describe()
    int8_rates = [peaks.int8_matmul, peaks.int8_conv or 0.0]
    assert rates["int8"] == pytest.approx(2 * max(int8_rates) / 1000)

    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    settings = BenchmarkSettings(height=16, width=16, warmup=0, rounds=2)
    cases = [Case("fp32", conv), Case("bf16", copy.deepcopy(conv), runtime="torch-bf16")]
    fp32, bf16 = run_benchmark(cases, settings, peak_rates={"fp32": 1.0, "bf16": 4.0})
    assert (fp32.precision, bf16.precision, bf16.runtime) == ("fp32", "bf16", "torch-bf16")
    assert fp32.matmul_pct == pytest.approx(100 * fp32.tflops / 1.0)
    assert bf16.matmul_pct == pytest.approx(100 * bf16.tflops / 4.0)
    assert bf16.gmacs == fp32.gmacs and bf16.peak_memory_mb > 0
    assert cases[1].module[0].weight.dtype == torch.float32  # converted on a copy

    # Sampled once per round; the shares use the medians.
    sampler = CpuPeakSampler(matmul_size=64, conv_channels=8, conv_size=8, repeats=1)
    [result] = run_benchmark([Case("conv", conv)], settings, peak_sampler=sampler)
    assert len(sampler.samples) == settings.rounds
    median = statistics.median(s.fp32_conv for s in sampler.samples)
    assert sampler.peaks().fp32_conv == median
    fp32_peak = sampler.peaks().by_precision()["fp32"]
    assert result.matmul_pct == pytest.approx(100 * result.tflops / fp32_peak)


def test_the_int8_peak_is_the_better_of_the_matmul_and_openvinos_int8_convs(monkeypatch):
    pytest.importorskip("openvino")
    from repvgg_seg.benchmark import peaks as peaks_module

    sampler = CpuPeakSampler(matmul_size=64, conv_channels=8, conv_size=8, repeats=1)
    rates = sampler.sample()
    assert rates.int8_conv > 0 and f"(OpenVINO) {rates.int8_conv:.0f}" in rates.describe()
    assert CpuPeaks(1, 1, 1, int8_matmul=100, int8_conv=300).by_precision()["int8"] == 0.6
    assert CpuPeaks(1, 1, 1, int8_matmul=300, int8_conv=100).by_precision()["int8"] == 0.6

    monkeypatch.setattr(peaks_module, "openvino_int8_conv_chain", lambda *shape: None)
    without = CpuPeakSampler(matmul_size=64, conv_channels=8, conv_size=8, repeats=1)
    assert without.sample().int8_conv is None and without.peaks().int8_conv is None
    assert "OpenVINO not installed" in without.peaks().describe()
    assert without.peaks().by_precision()["int8"] == 2 * without.peaks().int8_matmul / 1000


def test_runtimes_time_the_deployed_model_and_int8_is_quantized():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    import onnx

    segmentor = deployed_copy(build_segmentor(SYNTHETIC))
    # Each case wraps the segmentor itself, as tools/benchmark.py does.
    cases = [
        Case("torch", SegmentorLogits(segmentor)),
        Case("ort", SegmentorLogits(segmentor), runtime="onnxruntime"),
        Case("ort int8", SegmentorLogits(segmentor), runtime="onnxruntime-int8"),
        Case("openvino", SegmentorLogits(segmentor), runtime="openvino"),
    ]
    settings = BenchmarkSettings(height=32, width=32, warmup=0, rounds=1)
    with RuntimeRunners(calibration_inputs=1) as runners:
        results = run_benchmark(cases, settings, peak_rates={"int8": 1.0}, runners=runners)
        files = sorted(runners._exports.values())
        assert [f.name for f in files] == ["0.onnx", "1_int8.onnx"]  # one export serves all
        ops = {node.op_type for node in onnx.load(str(files[1])).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert not any(f.exists() for f in files)  # the exported files go with the runners
    torch_row, ort, int8, openvino = results
    assert [r.precision for r in results] == ["fp32", "fp32", "int8", "fp32"]
    assert ort.gmacs == int8.gmacs == openvino.gmacs == torch_row.gmacs  # one float32 model
    assert ort.peak_memory_mb is None and int8.matmul_pct is not None
    assert ort.matmul_pct is None  # no fp32 peak given
    assert "| - |" in format_table(results)


def test_cli_times_runtimes_with_a_peak_header_and_prints_no_profiler_noise(capfd):
    tool = load_tool("benchmark")
    tool.main(
        [
            str(SYNTHETIC), "--size", "32", "32", "--rounds", "1", "--warmup", "0",
            "--variants", "deploy", "--runtimes", "torch,torch-bf16",
            "--peak-size", "64", "--calib-inputs", "1",
        ]
    )  # fmt: skip
    out, err = capfd.readouterr()
    assert "host peak" in out and "int8 matmul" in out and "% of peak" in out
    for name in ("(deploy) |", "(deploy) [torch-bf16]"):
        assert name in out
    for noise in ("USDT", "profiler_start", "gpuGetDeviceCount", "ERROR"):
        assert noise not in out + err


@pytest.mark.parametrize(
    "options, message",
    [
        (["--threads", "-2"], "--threads must be at least 1, got -2"),
        (["--threads", "0"], "--threads must be at least 1, got 0"),
        (["-b", "0"], "batch must be at least 1, got 0"),
        (["--runtimes", "tensorrt"], "--runtimes: unknown ['tensorrt']"),
        (["--plain-repvgg", "A0:fastest"], "unknown dilation mode 'fastest'"),
    ],
)
def test_cli_refuses_bad_values_in_one_line(options, message, capsys):
    status, err = tool_exit("benchmark", [str(SYNTHETIC), *options], capsys)
    assert status == 2 and message in one_error_line(err, "benchmark")


def test_cli_checks_csv_and_json_paths_before_measuring(tmp_path, capsys):
    not_ours = tmp_path / "notes.csv"
    not_ours.write_text("my own notes\n")
    (tmp_path / "a_file").write_text("")
    cases = {
        "--csv": (tmp_path, "is a folder"),
        "--json": (tmp_path / "a_file" / "speed.json", "is a file, not a folder"),
        "--csv ": (not_ours, "is not a benchmark .csv this tool wrote"),
    }
    for option, (path, message) in cases.items():
        argv = [str(SYNTHETIC), "--size", "32", "32", option.strip(), str(path)]
        status, err = tool_exit("benchmark", argv, capsys)
        assert status == 2 and message in one_error_line(err, "benchmark")
        assert capsys.readouterr().out == ""  # refused before anything was measured
    assert not_ours.read_text() == "my own notes\n"
    same = str(tmp_path / "speed")
    status, err = tool_exit("benchmark", [str(SYNTHETIC), "--csv", same, "--json", same], capsys)
    assert status == 2 and "pass two file names" in one_error_line(err, "benchmark")


def test_cli_times_given_onnx_files_ptq_and_float_as_rows(tmp_path, capsys):
    """A PTQ-like QDQ file (what tools/quantize.py and tools/qat.py write) and a float one,
    both timed as they are in one run beside the config, one row per file and runtime."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    from repvgg_seg.benchmark.runtimes import quantize_onnx_int8
    from repvgg_seg.deploy import export_onnx

    segmentor = deployed_copy(build_segmentor(SYNTHETIC)).eval()
    float_file, int8_file = tmp_path / "model.onnx", tmp_path / "model_int8.onnx"
    export_onnx(segmentor, float_file, torch.randn(1, 3, 32, 32))
    quantize_onnx_int8(float_file, int8_file, [torch.randn(1, 3, 32, 32).numpy()])
    tool = load_tool("benchmark")
    argv = [
        str(SYNTHETIC), "--size", "32", "32", "--rounds", "1", "--warmup", "0",
        "--variants", "deploy", "--runtimes", "onnxruntime,openvino", "--peak-size", "64",
        "--onnx", str(int8_file), str(float_file), "--json", str(tmp_path / "speed.json"),
    ]  # fmt: skip
    tool.main(argv)
    printed = capsys.readouterr().out
    saved = json.loads((tmp_path / "speed.json").read_text())
    stem = SYNTHETIC.stem
    rows = {r["name"]: r for r in saved["results"]}
    assert list(rows) == [
        f"{stem} (deploy) [onnxruntime]",
        f"{stem} (deploy) [openvino]",
        f"{stem} ({int8_file}) [onnxruntime-int8]",
        f"{stem} ({int8_file}) [openvino-int8]",
        f"{stem} ({float_file}) [onnxruntime]",
        f"{stem} ({float_file}) [openvino]",
    ]
    assert saved["onnx_files"] == [str(int8_file), str(float_file)]
    for name, row in rows.items():
        assert name in printed and row["median_ms"] > 0
        assert row["gmacs"] == rows[f"{stem} (deploy) [onnxruntime]"]["gmacs"]
    assert [r["precision"] for r in rows.values()] == ["fp32"] * 2 + ["int8"] * 2 + ["fp32"] * 2

    # Refused in one line naming the file, before anything is measured (exit 2).
    base = argv[: argv.index("--onnx")]
    not_onnx, fixed = tmp_path / "notes.onnx", tmp_path / "fixed.onnx"
    not_onnx.write_text("not a model\n")
    _fixed_size_file(fixed)
    refusals = [
        (base, [not_onnx], "is not an ONNX model"),
        (base, [tmp_path / "missing.onnx"], "does not exist"),
        (base, [fixed], "its input [1, 3, 64, 64] does not take the benchmark's 1x3x32x32"),
        (base, [int8_file, int8_file], "a file is given twice"),
        (base[:-4], [int8_file], "--runtimes torch names no ONNX runtime"),
    ]
    for options, files, message in refusals:
        status, err = tool_exit("benchmark", [*options, "--onnx", *map(str, files)], capsys)
        line = one_error_line(err, "benchmark")
        assert status == 2 and message in line and str(files[0]) in line, line
        assert capsys.readouterr().out == ""


def _fixed_size_file(path: Path) -> None:
    """An ONNX model whose input is fixed to 1x3x64x64 (a float identity)."""
    import onnx
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 64, 64])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 64, 64])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["logits"])], "g", [image], [logits]
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


# Runs in a process of its own: where it fails, the process dies with SIGSEGV.
OPENVINO_SIGNALS = """
import gc, os, signal, sys
from pathlib import Path
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from repvgg_seg.benchmark.runtimes import openvino_runner

path = Path(sys.argv[1])
weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
graph = helper.make_graph(
    [helper.make_node("Conv", ["x", "w"], ["y"])], "conv",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], [weight],
)
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
array = np.zeros((1, 3, 8, 8), np.float32)
first = openvino_runner(path, array, 1)  # two cases, as a benchmark has
second = openvino_runner(path, array, 1)
first(), second()
del first  # released in the order they were made
gc.collect()
del second
gc.collect()
handled = []
signal.signal(signal.SIGUSR1, lambda *_: handled.append(True))
os.kill(os.getpid(), signal.SIGUSR1)
print("handled" if handled else "not handled")
"""


def test_openvino_runners_leave_signal_handling_working(tmp_path):
    # Two OpenVINO Cores destroyed in creation order left the main thread on a freed signal
    # stack: the next Python-handled signal (SIGTERM, Ctrl-C, DataLoader's SIGCHLD) was SIGSEGV.
    pytest.importorskip("openvino")
    done = run_script(OPENVINO_SIGNALS, str(tmp_path / "conv.onnx"), timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "handled", (done.returncode, done.stderr)
