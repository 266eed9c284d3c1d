"""INT8 quantization (tools/quantize.py) and ONNX models tested like checkpoints.

One small segmentor (the synthetic config, random weights and BN statistics) on a tiny
synthetic Cityscapes whose val labels are the float model's own predictions: the float
mIoU is then 100 and any pixel that INT8 changes is a measurable drop.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from helpers import load_tool, quantization_model_files

pytest.importorskip("onnxruntime")

from repvgg_seg.cli import CheckFailedError, run_tool  # noqa: E402
from repvgg_seg.deploy import DatasetUnavailableError  # noqa: E402
from repvgg_seg.loader import load_segmentor  # noqa: E402
from repvgg_seg.onnx_segmentor import OnnxModelError, build_onnx_segmentor  # noqa: E402
from repvgg_seg.output_dir import RECORD_NAME  # noqa: E402
from repvgg_seg.quantize import calibration_inputs  # noqa: E402
from repvgg_seg.quantize.calibration import calibration_dataset  # noqa: E402

CROP = (32, 64)
KEEP = ["backbone.stem.fused_conv", "decode_head.conv_seg"]


def run_main(tool, args: list[str], capsys) -> tuple[int, str]:
    """Runs a tool's main as its ``__main__`` does: (exit status, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        run_tool(lambda: tool.main(args))
    return exit_info.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """(config, checkpoint): random weights; val labels are the float model's predictions."""
    dataloaders = (
        "train_dataloader = dict(dataset=dict(data_root=data_root))\n"
        "val_dataloader = dict(dataset=dict(data_root=data_root))\n"
    )
    root = tmp_path_factory.mktemp("quantize")
    return quantization_model_files(root, (3, 2), CROP, dataloaders, "val")


def quantize_args(model_files, out_dir: Path, *options: str) -> list[str]:
    config, checkpoint = model_files
    return [str(config), str(checkpoint), str(out_dir), "--calib-images", "2", *options]


@pytest.fixture(scope="module")
def quantized(model_files, tmp_path_factory):
    """tools/quantize.py's output, two convs kept in float by name and the two most sensitive
    others by rank, 5 calibration images asked of 3: (onnx, report, printed, progress bars)."""
    from repvgg_seg.quantize import pipeline

    out_dir = tmp_path_factory.mktemp("int8")
    options = ("--max-miou-drop", "100", "--keep-float", "2", "--calib-images", "5")
    args = quantize_args(model_files, out_dir, *options)
    export = pipeline.export_onnx

    def export_and_keep(model, path, example):  # for exported_once
        export(model, path, example)
        shutil.copy(path, out_dir.parent / "exported.onnx")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "export_onnx", export_and_keep)
        printed, bars = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(bars):
            assert load_tool("quantize").main([*args, "--keep-float-layers", *KEEP]) == 0
    stem = model_files[0].stem
    report = json.loads((out_dir / f"{stem}_int8.json").read_text())
    return out_dir / f"{stem}_int8.onnx", report, printed.getvalue(), bars.getvalue()


@pytest.fixture()
def exported_once(quantized, monkeypatch):
    """Later runs take the float ONNX export of the ``quantized`` run (the same model; the
    export is the slowest step)."""
    from repvgg_seg.quantize import pipeline

    exported = quantized[0].parent.parent / "exported.onnx"
    monkeypatch.setattr(pipeline, "export_onnx", lambda m, path, x: shutil.copy(exported, path))


def test_calibration_reads_the_train_pipeline(model_files):
    config, checkpoint = model_files
    from mmengine.config import Config

    cfg = Config.fromfile(str(config))
    model = load_segmentor(cfg, checkpoint)
    dataset = calibration_dataset(cfg)
    first = calibration_inputs(dataset, model.data_preprocessor, 3, seed=0)
    again = calibration_inputs(dataset, model.data_preprocessor, 3, seed=0)
    other = calibration_inputs(dataset, model.data_preprocessor, 3, seed=1)
    # The pipeline's RandomResize and RandomCrop (the files are 48x96), then normalized.
    crop = next(t.crop_size for t in cfg.train_pipeline if t.type == "RandomCrop")
    assert [image.shape for image in first] == [(1, 3, *crop)] * 3
    assert all(image.dtype == np.float32 and abs(image.mean()) < 3 for image in first)
    np.testing.assert_array_equal(first[0], again[0])  # seeded: repeatable
    assert not np.array_equal(first[0], other[0])  # the transforms are random
    assert not np.array_equal(first[0], first[1])  # spread over the dataset


def test_quantized_model_and_report(quantized):
    path, report, _, _ = quantized
    evaluation = report["evaluation"]
    assert evaluation["float32"]["mIoU"] == 100.0  # the labels are its predictions
    assert evaluation["pixels"] == 2 * 96 * 48
    assert 0 < evaluation["pixel_agreement_percent"] <= 100
    assert report["quantization"]["convs"] == 28
    assert report["host"]["cpu"] and report["versions"]["onnxruntime"]
    # No staging left: the one hidden file is the folder's record of what tools wrote.
    assert [p.name for p in path.parent.iterdir() if p.name[0] == "."] == [RECORD_NAME]


def float_convs(model: onnx.ModelProto) -> list[str]:
    """The Conv nodes of a QDQ model whose weights are not dequantized INT8 (left in float)."""
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return [
        n.name for n in model.graph.node if n.op_type == "Conv" and n.input[1] not in dequantized
    ]


def test_a_small_training_set_is_calibrated_on_whole_and_said_so(quantized):
    _, report, printed, bars = quantized
    calibration = report["quantization"]["calibration"]
    assert (calibration["images"], calibration["images_requested"]) == (3, 5)
    assert "calibrated on all 3 training images (--calib-images 5" in printed
    # The bar ends at its total (3 images read and run), the next header on a line of its own.
    assert "6/6," in bars and "/10," not in bars
    assert "\nsensitivity (one conv quantized at a time):" in bars


def test_named_and_most_sensitive_convs_stay_float(quantized):
    path, report, printed, _ = quantized
    ranking = report["sensitivity"]
    errors = [layer["relative_error"] for layer in ranking]
    assert len(ranking) == 28 and errors == sorted(errors, reverse=True) and errors[0] > 0
    worst = [layer["name"] for layer in ranking if layer["name"] not in KEEP][:2]
    assert report["quantization"]["kept_float"] == KEEP + worst
    # Read from the graph: exactly those convs take float weights, every other one INT8.
    assert sorted(float_convs(onnx.load(str(path)))) == sorted(KEEP + worst)
    assert "convs by sensitivity" in printed and f"{worst[0]}: " in printed


def test_onnx_segmentor_checks_the_file_and_the_config(model_files, quantized, tmp_path):
    from mmengine.config import Config

    cfg = Config.fromfile(str(model_files[0]))
    model = build_onnx_segmentor(cfg, quantized[0])
    assert model.out_channels == 19 and model.test_cfg.mode == "whole"
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"not a protobuf")
    with pytest.raises(OnnxModelError, match="is not an ONNX model"):
        build_onnx_segmentor(cfg, not_onnx)
    cfg.model.decode_head.num_classes = 7
    with pytest.raises(OnnxModelError, match="the config predicts 7 classes") as error:
        build_onnx_segmentor(cfg, quantized[0])
    assert str(quantized[0]) in str(error.value) and str(model_files[0]) in str(error.value)


def test_a_drop_above_the_limit_writes_nothing(model_files, exported_once, tmp_path, capsys):
    out_dir = tmp_path / "refused"
    args = quantize_args(model_files, out_dir, "--max-miou-drop", "0", "--no-per-channel")
    with pytest.raises(CheckFailedError, match="nothing written") as refusal:
        load_tool("quantize").main(args)
    # Advice that can help: more calibration images do not (docs/quantization.md).
    assert "--keep-float K" in str(refusal.value) and "--calib-images" not in str(refusal.value)
    assert "mIoU float 100.00" in capsys.readouterr().out
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda a: [a[0], str(Path(a[1]).with_name("missing.pth")), *a[2:]], "missing.pth"),
        (lambda a: [a[0], str(Path(a[1]).with_name("other.pth")), *a[2:]], "does not fit"),
        (lambda a: [*a, "--keep-float-layers", "backbone.nope"], "backbone.nope: no such conv"),
        (lambda a: [*a, "--calib-images", "0"], "--calib-images must be at least 1"),
        (lambda a: [a[0], a[1], a[0], *a[3:]], "is a file, not a folder"),
        (
            lambda a: [*a, "--cfg-options", "val_dataloader.dataset.data_root=/nonexistent"],
            "/nonexistent",
        ),
    ],
    ids=[
        "missing checkpoint",
        "checkpoint of another model",
        "unknown layer",
        "empty calibration set",
        "out dir is a file",
        "missing val set",
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(model_files, tmp_path, capsys, change, expected):
    out_dir = tmp_path / "out"
    status, stderr = run_main(
        load_tool("quantize"), change(quantize_args(model_files, out_dir)), capsys
    )
    assert status == 2, stderr
    assert len(stderr.strip().splitlines()) == 1 and expected in stderr, stderr
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_missing_calibration_set_is_named(model_files, tmp_path):
    from mmengine.config import Config

    cfg = Config.fromfile(str(model_files[0]))
    cfg.train_dataloader.dataset.data_root = str(tmp_path / "empty")
    with pytest.raises(DatasetUnavailableError, match="train_dataloader.dataset") as error:
        calibration_dataset(cfg)
    assert "Calibration (--calib-images) reads it" in str(error.value)
    assert str(model_files[0]) in str(error.value)


def test_test_and_infer_tools_run_the_int8_model(model_files, quantized, tmp_path):
    from mmseg.apis import inference_model

    config, (path, report, _, _) = model_files[0], quantized
    metrics = load_tool("test").main([str(config), str(path), "--work-dir", str(tmp_path / "w")])
    # The same images, pipeline and metric as tools/quantize.py's own measurement.
    assert metrics["mIoU"] == pytest.approx(report["evaluation"]["int8"]["mIoU"], abs=0.01)

    images = sorted((config.parent / "data" / "leftImg8bit" / "val").rglob("*.png"))
    out_dir = tmp_path / "infer"
    args = [str(config), str(path), str(images[0]), "--out-dir", str(out_dir), "--save-labels"]
    assert load_tool("infer").main(args) == 0
    (labels_file,) = (out_dir / "labels").rglob("*.png")
    labels = np.array(Image.open(labels_file))
    expected = inference_model(load_segmentor(config, path), str(images[0]))
    np.testing.assert_array_equal(labels, expected.pred_sem_seg.data[0].numpy())
    assert labels.shape == (48, 96)


def test_an_interrupted_run_leaves_nothing(model_files, tmp_path, monkeypatch):
    from repvgg_seg.quantize import pipeline

    def interrupted_export(model, path, example):
        Path(path).write_bytes(b"half an export")  # in the staging folder
        raise KeyboardInterrupt  # Ctrl-C

    monkeypatch.setattr(pipeline, "export_onnx", interrupted_export)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("a user's file")
    with pytest.raises(KeyboardInterrupt):
        load_tool("quantize").main(quantize_args(model_files, out_dir))
    assert [path.name for path in out_dir.iterdir()] == ["notes.txt"]


def test_a_file_that_is_not_an_onnx_model_is_one_line(model_files, tmp_path, capsys):
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_text("not a protobuf")
    args = [str(model_files[0]), str(not_onnx), "--work-dir", str(tmp_path / "w")]
    status, stderr = run_main(load_tool("test"), args, capsys)
    assert status == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert f"'{not_onnx}' is not an ONNX model" in stderr


def test_onnx_segmentor_runs_the_configs_sliding_window(model_files, quantized):
    from mmengine.config import Config

    cfg = Config.fromfile(str(model_files[0]))
    batch = next(iter(_val_batches(cfg)))
    whole = build_onnx_segmentor(cfg, quantized[0])
    outputs = {"whole": _logits(whole, batch)}
    for name, crop, stride in (
        ("one window", (128, 256), (128, 256)),
        ("3x3", (64, 128), (32, 64)),
    ):
        cfg.model.test_cfg = dict(mode="slide", crop_size=crop, stride=stride)
        model = build_onnx_segmentor(cfg, quantized[0])
        runs = []
        model.session = _Counting(model.session, runs)
        outputs[name] = _logits(model, batch)
        assert len(runs) == (1 if name == "one window" else 9)
    # A window covering the (resized, 128x256) image is whole-image inference; 3x3 smaller
    # windows give logits at the image's size too, from one ONNX Runtime run each.
    torch.testing.assert_close(outputs["one window"], outputs["whole"])
    assert outputs["3x3"].shape == outputs["whole"].shape
    assert not torch.equal(outputs["3x3"], outputs["whole"])


class _Counting:
    def __init__(self, session, runs: list) -> None:
        self.session, self.runs = session, runs

    def run(self, names, feeds):
        self.runs.append(next(iter(feeds.values())).shape)
        return self.session.run(names, feeds)


def _val_batches(cfg):
    from repvgg_seg.quantize.calibration import evaluation_dataset, evaluation_samples

    return evaluation_samples(evaluation_dataset(cfg), 1)


def _logits(model, batch) -> torch.Tensor:
    import copy

    data = model.data_preprocessor(copy.deepcopy(batch), False)
    (sample,) = model.predict(data["inputs"], data["data_samples"])
    return sample.seg_logits.data
