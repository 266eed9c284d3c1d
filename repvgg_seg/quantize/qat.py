"""Quantization-aware fine-tuning of a deployed segmentor, exported as tools/quantize.py's
QDQ INT8 model and measured the same way (``tools/qat.py``).

1. deploy the checkpoint (fusion, conv+BN folding), export it, calibrate and quantize it as
   :func:`~.pipeline.quantize_checkpoint` does: that QDQ model fixes every activation's
   scale and zero point (:func:`~.qat_model.conv_quantization`);
2. fine-tune the deployed segmentor with those fake-quantized activations and
   fake-quantized weights, through mmengine's runner on the config's train dataloader
   (:mod:`.qat_runner`; checkpoints in a work dir, ``--resume``, torchrun);
3. put the trained weights into the float ONNX graph of step 1 and quantize it with the same
   calibration ranges: the INT8 model is the trained one;
4. measure it against the float model with mmseg's IoUMetric on val images; write
   ``<stem>_qat.onnx`` and ``<stem>_qat.json`` only within ``max_miou_drop``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from mmengine.config import Config
from mmengine.dist import broadcast_object_list, is_distributed, is_main_process

from ..atomic_io import write_atomically
from ..deploy import OutputFolder, export_onnx
from ..errors import UsageError
from ..host import cpu_info
from ..loader import config_name, input_size_of, load_segmentor
from ..onnx_segmentor import build_onnx_segmentor
from ..runner import claim_work_dir
from .calibration import (
    calibration_dataset,
    calibration_inputs,
    evaluation_dataset,
    evaluation_samples,
)
from .evaluation import Evaluation, compare_segmentors
from .onnx_quant import (
    activation_format,
    collect_ranges,
    conv_names,
    prepare_float_model,
    quantize_model,
    save_model,
    with_uint8_activations,
)
from .pipeline import QuantizeOptions, QuantizeReport, describe, publish_if_passed
from .qat_model import (
    conv_parameters,
    conv_quantization,
    insert_fake_quant,
    learn_activation_scales,
    with_activation_scales,
    with_trained_weights,
)
from .qat_runner import QATSchedule, QATSegmentor, build_qat_runner, qat_config
from .steps import Steps, check_layer_names, deploy_checked


@dataclass(frozen=True)
class QATOptions:
    """Everything :func:`qat_checkpoint` needs besides the config and checkpoint.

    Attributes:
        quantize: Calibration, weight granularity, evaluation and the ``max_miou_drop`` gate,
            as for tools/quantize.py (convs kept float only by name).
        schedule: The fine-tuning.
        work_dir: The training's work dir (default ``OUT_DIR/<stem>_qat_work``).
        resume: Continue the work dir's training from its last checkpoint.
        start_over: Delete the work dir's earlier checkpoints first.
        launcher: ``none`` or ``pytorch`` (torchrun).
        compare_ptq: Also measure the post-training INT8 model of step 1.
    """

    quantize: QuantizeOptions = field(default_factory=QuantizeOptions)
    schedule: QATSchedule = field(default_factory=QATSchedule)
    work_dir: str | None = None
    resume: bool = False
    start_over: bool = False
    launcher: str = "none"
    compare_ptq: bool = False

    def __post_init__(self) -> None:
        if self.quantize.ranks_convs:
            raise UsageError(
                "tools/qat.py keeps convs in float32 only by name (--keep-float-layers); "
                "rank them with tools/quantize.py --sensitivity."
            )


@dataclass
class QATReport(QuantizeReport):
    """:class:`~.pipeline.QuantizeReport` plus the training and, optionally, the PTQ model.

    Attributes:
        qat: Options used.
        ptq_evaluation: The post-training INT8 model (``compare_ptq``).
        work_dir: The training's work dir.
        final_lr: Learning rate at the last iteration.
        scale_change: With learned scales: the largest and the median relative change of
            an activation scale, in percent.
    """

    qat: QATOptions = field(default_factory=QATOptions)
    ptq_evaluation: Evaluation | None = None
    work_dir: str = ""
    final_lr: float | None = None
    scale_change: tuple[float, float] | None = None


def qat_checkpoint(
    cfg: Config, checkpoint: str | os.PathLike, out_dir: str | os.PathLike, options: QATOptions
) -> QATReport | None:
    """Fine-tunes, exports and measures; every rank calls it, rank 0 returns the report.

    Raises:
        CheckpointError: The checkpoint does not fit the config.
        DatasetUnavailableError: The training or val set is missing or empty.
        WorkDirBusyError: Another run writes into ``out_dir`` or trains in the work dir.
        EarlierRunError: The work dir holds an earlier run and neither ``resume`` nor
            ``start_over`` is set.
    """
    steps = Steps(None)
    stem = Path(config_name(cfg)).stem
    folder = OutputFolder(out_dir, stem, "qat", (".onnx", ".json"), "tools/qat.py")
    work_dir = options.work_dir or os.path.join(out_dir, f"{stem}_qat_work")
    folder.check()
    calibration_set, val_set = calibration_dataset(cfg), evaluation_dataset(cfg)
    run_cfg = qat_config(cfg, work_dir, options.schedule)  # refuses --amp without a GPU
    deployed = deploy_checked(load_segmentor(cfg, checkpoint), next(evaluation_samples(val_set, 1)))
    check_layer_names(options.quantize.keep_float_layers, deployed)
    steps.done("deploy")

    with contextlib.ExitStack() as stack:
        shared: list = [None]
        if is_main_process():
            try:
                stack.enter_context(folder)
                shared[0] = _post_training(cfg, deployed, calibration_set, folder.staging, options)
            except (UsageError, ValueError, OSError, RuntimeError) as error:
                shared[0] = error
        if is_distributed():
            broadcast_object_list(shared, src=0)
        if isinstance(shared[0], BaseException):
            raise shared[0]
        ptq = shared[0]
        steps.done("calibration")

        student = _student(deployed, calibration_set, ptq.quantization, options)
        if options.schedule.learn_scales:
            initial_scales = student.activation_scales.values()
        model = QATSegmentor(
            student, deployed, options.schedule.label_weight, options.schedule.distill_weight
        )
        with claim_work_dir(work_dir, options.resume, None, options.start_over):
            runner = build_qat_runner(run_cfg, model, options.launcher, options.resume)
            trained = runner.train()
        steps.done("training")
        if not is_main_process():
            return None
        trained = getattr(trained, "module", trained)
        report = QATReport(folder.staging / f"{stem}_qat.onnx", folder.staging / f"{stem}_qat.json")
        report.options, report.qat, report.work_dir = options.quantize, options, work_dir
        report.convs, report.kept_float = ptq.convs, list(options.quantize.keep_float_layers)
        report.calibration_images = min(options.quantize.calib_images, len(calibration_set))
        report.final_lr = _last_lr(runner)
        parameters = conv_parameters(ptq.prepared.graph, deployed)
        qat_float = with_trained_weights(ptq.prepared, trained.student, deployed, parameters)
        quantized = quantize_model(
            qat_float, ptq.ranges, options.quantize.per_channel, nodes_to_exclude=report.kept_float
        )
        if options.schedule.learn_scales:
            learned = trained.student.activation_scales.values()
            with_activation_scales(quantized, learned)
            report.scale_change = _scale_change(learned, initial_scales)
        report.activations = ptq.activations
        if report.activations == "uint8":  # as tools/quantize.py writes it on this host
            quantized = with_uint8_activations(quantized)
        write_atomically(report.onnx, lambda file: save_model(quantized, file))
        steps.done("export")
        _evaluate(report, cfg, ptq, val_set)
        steps.done("evaluation")
        report.seconds = steps.seconds
        publish_if_passed(report, folder, lambda: describe_qat(report, cfg, checkpoint))
        return report


def _student(deployed, calibration_set, quantization: dict, options: QATOptions):
    """The fake-quantized copy of ``deployed`` that trains, with the options' variants."""
    student = copy.deepcopy(deployed)
    insert_fake_quant(student, quantization, options.quantize.per_channel)
    if options.schedule.learn_scales:
        learn_activation_scales(student)
    return student


def _scale_change(learned: dict[str, float], initial: dict[str, float]) -> tuple[float, float]:
    change = [abs(learned[name] / initial[name] - 1) * 100 for name in initial]
    return max(change), float(np.median(change))


@dataclass
class _PostTraining:
    """Step 1's products: the prepared float graph, its ranges and the PTQ INT8 model."""

    prepared: onnx.ModelProto
    prepared_path: Path
    ranges: object
    quantization: dict
    ptq_path: Path
    convs: int
    activations: str


def _post_training(cfg, deployed, calibration_set, staging: Path, options: QATOptions):
    settings = options.quantize
    export_onnx(deployed, staging / "float.onnx", torch.randn(1, 3, *input_size_of(cfg)))
    prepared_path = staging / "float_prepared.onnx"
    prepared = prepare_float_model(staging / "float.onnx", prepared_path)
    images = calibration_inputs(
        calibration_set, deployed.data_preprocessor, settings.calib_images, settings.seed
    )
    ranges = collect_ranges(prepared_path, images, settings.calib_method, staging)
    ptq = quantize_model(
        prepared, ranges, settings.per_channel, nodes_to_exclude=settings.keep_float_layers
    )
    quantization = conv_quantization(ptq)
    activations = activation_format(settings.activations, cpu_info()[1])
    if activations == "uint8":
        ptq = with_uint8_activations(ptq)
    ptq_path = staging / "ptq.onnx"
    write_atomically(ptq_path, lambda file: save_model(ptq, file))
    return _PostTraining(
        prepared,
        prepared_path,
        ranges,
        quantization,
        ptq_path,
        len(conv_names(prepared)),
        activations,
    )


def _evaluate(report: QATReport, cfg: Config, ptq: _PostTraining, val_set) -> None:
    """INT8 (and PTQ INT8) against the float model on the val images."""
    settings = report.options
    reference = build_onnx_segmentor(cfg, ptq.prepared_path)
    for attribute, path in (("evaluation", report.onnx), ("ptq_evaluation", ptq.ptq_path)):
        if attribute == "ptq_evaluation" and not report.qat.compare_ptq:
            continue
        evaluation = compare_segmentors(
            reference,
            build_onnx_segmentor(cfg, path),
            evaluation_samples(val_set, settings.eval_images),
            val_set.metainfo,
        )
        setattr(report, attribute, evaluation)


def _last_lr(runner) -> float | None:
    with contextlib.suppress(Exception):
        return float(runner.optim_wrapper.get_lr()["lr"][0])
    return None


def describe_qat(report: QATReport, cfg: Config, checkpoint: str | os.PathLike) -> dict:
    """tools/quantize.py's JSON report, with the fine-tuning (and the PTQ model) added."""
    described = describe(report, cfg, checkpoint)
    schedule = report.qat.schedule
    described["quantization"]["library"] = (
        "quantization-aware fine-tuning (PyTorch fake quantization), then "
        "onnxruntime.quantization (static) with the calibration's ranges"
    )
    described["qat"] = {
        "iterations": schedule.iterations,
        "lr": schedule.lr,
        "final_lr": report.final_lr,
        "lr_schedule": "poly (power 0.9) to 0",
        # The config's optimizer as the fine-tuning ran it (qat_config sets its LR).
        "optimizer": {**cfg.optim_wrapper.get("optimizer", {}), "lr": schedule.lr},
        "label_weight": schedule.label_weight,
        "distill_weight": schedule.distill_weight,
        "batch_size": cfg.train_dataloader.get("batch_size"),
        "work_dir": report.work_dir,
        "learn_scales": schedule.learn_scales,
    }
    if report.scale_change is not None:
        described["qat"]["scale_change_percent"] = {
            "max": round(report.scale_change[0], 3),
            "median": round(report.scale_change[1], 3),
        }
    if report.ptq_evaluation is not None:
        ptq = report.ptq_evaluation
        described["ptq_evaluation"] = {
            "int8": ptq.int8_metrics,
            "miou_change": round(ptq.miou_change, 4),
            "pixel_agreement_percent": round(ptq.pixel_agreement, 4),
        }
    described["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return described
