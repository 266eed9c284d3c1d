"""Quantization-aware fine-tuning (tools/qat.py, repvgg_seg.quantize.qat*).

A small segmentor (the synthetic config, random weights and BN statistics) on a tiny
synthetic Cityscapes whose "val" images are its training images, labelled with the float
model's own predictions: the float mIoU is 100, and distilling the float model on the
training images directly targets what is measured. Per-tensor weights make post-training
INT8 lose clearly, so the test can see QAT win it back.
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

from helpers import load_tool, one_error_line, quantization_model_files, tool_exit

pytest.importorskip("onnxruntime")

from repvgg_seg.loader import load_segmentor  # noqa: E402
from repvgg_seg.quantize import qat  # noqa: E402
from repvgg_seg.quantize.qat_runner import QATSegmentor  # noqa: E402

ITERATIONS = 12


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """(config, checkpoint): random weights, BN scales that keep the activations O(1);
    labels (of train, which is val too) are the float model's predictions."""
    dataloaders = (
        "train_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),\n"
        "    dict(type='Resize', scale=image_scale, keep_ratio=True),\n"
        "    dict(type='RandomFlip', prob=0.5), dict(type='PackSegInputs')]\n"
        "train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,\n"
        "    dataset=dict(data_root=data_root, pipeline=train_pipeline))\n"
        "val_dataloader = dict(dataset=dict(data_root=data_root, data_prefix=dict(\n"
        "    img_path='leftImg8bit/train', seg_map_path='gtFine/train')))\n"
    )
    root = tmp_path_factory.mktemp("qat")
    return quantization_model_files(root, (4, 1), (48, 96), dataloaders, "train", moderate_bn=True)


def qat_args(model_files, out_dir: Path, *options: str) -> list[str]:
    config, checkpoint = model_files
    return [
        str(config),
        str(checkpoint),
        str(out_dir),
        "--calib-images",
        "4",
        "--no-per-channel",
        "--label-weight",
        "0",
        "--log-interval",
        "4",
        *options,
    ]


@pytest.fixture(scope="module")
def trained(model_files, tmp_path_factory):
    """tools/qat.py's output with the PTQ model measured too: (onnx, report, printed)."""
    out_dir = tmp_path_factory.mktemp("qat_out")
    args = qat_args(model_files, out_dir, "--iters", str(ITERATIONS), "--compare-ptq")
    export = qat.export_onnx

    def export_and_keep(model, path, example):  # later runs reuse it (exported_once)
        export(model, path, example)
        shutil.copy(path, out_dir.parent / "exported.onnx")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(qat, "export_onnx", export_and_keep)
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            assert load_tool("qat").main([*args, "--max-miou-drop", "100"]) == 0
    stem = model_files[0].stem
    report = json.loads((out_dir / f"{stem}_qat.json").read_text())
    return out_dir / f"{stem}_qat.onnx", report, printed.getvalue()


@pytest.fixture()
def exported_once(trained, monkeypatch):
    exported = trained[0].parent.parent / "exported.onnx"
    monkeypatch.setattr(qat, "export_onnx", lambda m, path, x: shutil.copy(exported, path))


def test_qat_recovers_what_post_training_quantization_loses(trained):
    _, report, printed = trained
    ptq, qat_int8 = report["ptq_evaluation"], report["evaluation"]
    assert report["evaluation"]["float32"]["mIoU"] == 100.0
    assert ptq["miou_change"] < -5  # per-tensor weights: plain INT8 loses clearly
    assert qat_int8["int8"]["mIoU"] > ptq["int8"]["mIoU"] + 2
    assert qat_int8["pixel_agreement_percent"] > ptq["pixel_agreement_percent"] + 1
    assert "post-training INT8: mIoU float 100.00" in printed and "QAT INT8:" in printed


def test_report_and_files(trained):
    path, report, _ = trained
    assert report["qat"]["iterations"] == ITERATIONS and report["qat"]["final_lr"] == 0.0
    assert report["qat"]["lr"] == 1e-3 and report["qat"]["distill_weight"] == 1.0
    assert report["qat"]["optimizer"]["lr"] == 1e-3  # the fine-tuning's, not the config's
    assert report["quantization"]["calibration"]["images"] == 4
    assert report["quantization"]["per_channel"] is False
    assert set(report["seconds"]) >= {"deploy", "calibration", "training", "export"}
    # tools/quantize.py's format: QDQ, every conv's weight INT8.
    graph = onnx.load(str(path)).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in graph.node}
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert len(convs) == 28 and all(node.input[1] in dequantized for node in convs)
    work_dir = Path(report["qat"]["work_dir"])
    assert (work_dir / f"iter_{ITERATIONS}.pth").is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".") and "staging" in p.name]


def test_the_fake_quantized_model_is_the_exported_int8_model(model_files, trained):
    """What is trained is what is exported: the fake-quantized segmentor's logits equal the
    QDQ model's (before any training, on the same calibration)."""
    import copy

    from mmengine.config import Config

    from repvgg_seg.deploy import SegmentorLogits
    from repvgg_seg.onnx_segmentor import open_session
    from repvgg_seg.quantize.calibration import (
        calibration_dataset,
        evaluation_dataset,
        evaluation_samples,
    )
    from repvgg_seg.quantize.pipeline import QuantizeOptions
    from repvgg_seg.quantize.qat_model import insert_fake_quant
    from repvgg_seg.quantize.steps import deploy_checked

    cfg = Config.fromfile(str(model_files[0]))
    val = evaluation_dataset(cfg)
    deployed = deploy_checked(load_segmentor(cfg, model_files[1]), next(evaluation_samples(val, 1)))
    staging = trained[0].parent.parent / "check"
    staging.mkdir()
    shutil.copy(trained[0].parent.parent / "exported.onnx", staging / "float.onnx")
    options = qat.QATOptions(quantize=QuantizeOptions(calib_images=2, per_channel=True))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(qat, "export_onnx", lambda *args: None)
        ptq = qat._post_training(cfg, deployed, calibration_dataset(cfg), staging, options)
    student = copy.deepcopy(deployed)
    assert len(insert_fake_quant(student, ptq.quantization, per_channel=True)) == ptq.convs
    image = torch.randn(2, 3, 48, 96, generator=torch.Generator().manual_seed(0))
    (int8,) = open_session(str(ptq.ptq_path)).run(["logits"], {"image": image.numpy()})
    (reference,) = open_session(str(ptq.prepared_path)).run(["logits"], {"image": image.numpy()})
    with torch.no_grad():
        simulated = SegmentorLogits(student.eval())(image).numpy()
    # A small share of INT8's own error: on the demo model 20 %, arising in the convs
    # (int32 accumulation vs float32, values on a rounding boundary one step apart) and not
    # in the unsimulated PSP pooling, Resize and Concat (docs/quantization.md).
    int8_error = np.linalg.norm(int8 - reference)
    assert np.linalg.norm(simulated - int8) < 0.5 * int8_error
    assert (simulated.argmax(1) == int8.argmax(1)).mean() > 0.95  # random inputs: near-ties


def test_tools_run_the_qat_model_like_a_ptq_model(model_files, trained, tmp_path):
    config, (path, report, _) = model_files[0], trained
    metrics = load_tool("test").main([str(config), str(path), "--work-dir", str(tmp_path / "w")])
    assert metrics["mIoU"] == pytest.approx(report["evaluation"]["int8"]["mIoU"], abs=0.01)
    image = next((config.parent / "data" / "leftImg8bit" / "train").rglob("*.png"))
    args = [str(config), str(path), str(image), "--out-dir", str(tmp_path / "infer")]
    assert load_tool("infer").main([*args, "--save-labels"]) == 0
    assert len(list((tmp_path / "infer" / "labels").rglob("*.png"))) == 1


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda a: [a[0], str(Path(a[1]).with_name("other.pth")), *a[2:]], "does not fit"),
        (
            lambda a: [*a, "--cfg-options", "model.backbone.deploy=True"],
            "holds training-time RepVGG blocks",
        ),
        (lambda a: [*a, "--iters", "0"], "--iters must be at least 1"),
        (lambda a: [*a, "--lr", "0"], "--lr must be positive"),
    ],
    ids=["checkpoint of another model", "fused config, training checkpoint", "iters", "lr"],
)
def test_bad_input_is_one_line_and_writes_nothing(model_files, tmp_path, capsys, change, expected):
    out_dir = tmp_path / "out"
    status, err = tool_exit("qat", change(qat_args(model_files, out_dir)), capsys)
    assert status == 2 and expected in one_error_line(err, "qat")
    assert not out_dir.exists()


def test_an_output_folder_in_use_is_refused(model_files, tmp_path, capsys):
    from repvgg_seg.deploy import OutputFolder

    out_dir = tmp_path / "busy"
    with OutputFolder(out_dir, model_files[0].stem, "qat", (".onnx", ".json"), "tools/qat.py"):
        status, err = tool_exit("qat", qat_args(model_files, out_dir), capsys)
        assert status == 2 and "another tools/qat.py run" in one_error_line(err, "qat")
        assert sorted(p.name for p in out_dir.iterdir() if not p.name.startswith(".")) == []


def test_an_interrupted_training_resumes(model_files, exported_once, tmp_path, capsys):
    out_dir = tmp_path / "out"
    args = qat_args(model_files, out_dir, "--iters", "4", "--checkpoint-interval", "1")
    forward, steps = QATSegmentor.forward, []

    def interrupted_at_step_3(self, inputs, data_samples=None, mode="tensor"):
        if mode == "loss":
            steps.append(1)
            if len(steps) == 3:
                raise KeyboardInterrupt  # Ctrl-C (SIGTERM unwinds the same way)
        return forward(self, inputs, data_samples, mode)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(QATSegmentor, "forward", interrupted_at_step_3)
        status, err = tool_exit("qat", [*args, "--max-miou-drop", "100"], capsys)
    assert status == 130 and "interrupted" in one_error_line(err, "qat")
    work_dir = out_dir / f"{model_files[0].stem}_qat_work"
    assert sorted(p.name for p in work_dir.glob("iter_*.pth")) == ["iter_1.pth", "iter_2.pth"]
    assert sorted(p.name for p in out_dir.iterdir()) == [work_dir.name]  # no ONNX, no staging

    status, err = tool_exit("qat", [*args, "--max-miou-drop", "100"], capsys)
    assert status == 2 and "--resume" in one_error_line(err, "qat")  # never mixes two runs

    steps.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(QATSegmentor, "forward", _counting(forward, steps))
        status, err = tool_exit("qat", [*args, "--resume", "--max-miou-drop", "100"], capsys)
    assert status == 0, err
    assert len(steps) == 2  # iterations 3 and 4 only
    report = json.loads((out_dir / f"{model_files[0].stem}_qat.json").read_text())
    assert report["qat"]["iterations"] == 4 and (work_dir / "iter_4.pth").is_file()


def _counting(forward, steps: list):
    def counted(self, inputs, data_samples=None, mode="tensor"):
        if mode == "loss":
            steps.append(1)
        return forward(self, inputs, data_samples, mode)

    return counted


def _deployed(model_files):
    from mmengine.config import Config

    from repvgg_seg.quantize.calibration import evaluation_dataset, evaluation_samples
    from repvgg_seg.quantize.steps import deploy_checked

    cfg = Config.fromfile(str(model_files[0]))
    sample = next(evaluation_samples(evaluation_dataset(cfg), 1))
    return deploy_checked(load_segmentor(cfg, model_files[1]), sample)


@pytest.fixture(scope="module")
def trained_scales(model_files, tmp_path_factory):
    """tools/qat.py --learn-scales (a higher LR: the scales move in 12 iterations), and the
    student it trained."""
    out_dir = tmp_path_factory.mktemp("qat_scales")
    args = qat_args(model_files, out_dir, "--iters", str(ITERATIONS), "--lr", "0.01")
    convert, students = qat.with_trained_weights, []

    def keep_student(prepared, trained, reference, parameters):
        students.append(trained)
        return convert(prepared, trained, reference, parameters)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(qat, "with_trained_weights", keep_student)
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            assert load_tool("qat").main([*args, "--learn-scales", "--max-miou-drop", "100"]) == 0
    stem = model_files[0].stem
    report = json.loads((out_dir / f"{stem}_qat.json").read_text())
    return out_dir / f"{stem}_qat.onnx", report, printed.getvalue(), students[0]


def test_learned_scales_move_and_are_the_ones_exported(trained_scales):
    from onnx import numpy_helper

    path, report, printed, student = trained_scales
    assert report["qat"]["learn_scales"]
    assert report["qat"]["scale_change_percent"]["median"] > 0.01
    assert "learned activation scales: changed by" in printed
    learned = student.activation_scales.values()
    initializers = {i.name: i for i in onnx.load(str(path)).graph.initializer}
    exported = {name: float(numpy_helper.to_array(initializers[name])) for name in learned}
    assert exported == pytest.approx(learned, rel=1e-6)  # float32 both: equal
    calibrated = {}  # the convs' buffers keep the calibration's scales
    for conv in student.modules():
        for side in ("input", "output"):
            if getattr(conv, f"quantize_{side}", False):
                name = getattr(conv, f"{side}_scale_name")
                calibrated[name] = float(getattr(conv, f"{side}_scale"))
    assert calibrated.keys() == learned.keys() and len(learned) > 20
    moved = [name for name in learned if learned[name] != pytest.approx(calibrated[name])]
    assert len(moved) > len(learned) // 2


def test_learned_scales_export_the_trained_model(model_files, trained_scales):
    """The exported INT8 model is the trained fake-quantized model with its learned scales:
    the same check as before training, on the trained student."""
    from repvgg_seg.deploy import SegmentorLogits
    from repvgg_seg.onnx_segmentor import open_session

    path, _, _, student = trained_scales
    deployed = _deployed(model_files)
    image = torch.randn(2, 3, 48, 96, generator=torch.Generator().manual_seed(0))
    (int8,) = open_session(str(path)).run(["logits"], {"image": image.numpy()})
    with torch.no_grad():
        simulated = SegmentorLogits(student.eval())(image).numpy()
        reference = SegmentorLogits(deployed.eval())(image).numpy()
    assert np.linalg.norm(simulated - int8) < 0.5 * np.linalg.norm(int8 - reference)
    assert (simulated.argmax(1) == int8.argmax(1)).mean() > 0.95
