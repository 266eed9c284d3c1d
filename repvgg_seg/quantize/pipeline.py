"""The whole quantization step: load, deploy, export, calibrate, rank, quantize, measure,
publish (only when the INT8 model is within ``max_miou_drop`` of the float one)."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mmseg
import onnx
import onnxruntime
import torch
from mmengine.config import Config

from ..atomic_io import write_atomically
from ..deploy import (
    OutputFolder,
    export_onnx,
    refuse_bf16_deployment,
)
from ..errors import UsageError
from ..host import cpu_info
from ..loader import config_name, input_size_of, load_segmentor
from ..onnx_segmentor import build_onnx_segmentor
from .calibration import (
    calibration_dataset,
    calibration_inputs,
    evaluation_dataset,
    evaluation_samples,
)
from .evaluation import Evaluation, compare_segmentors
from .onnx_quant import (
    ACTIVATION_FORMATS,
    CALIBRATION_METHODS,
    activation_format,
    collect_ranges,
    conv_names,
    prepare_float_model,
    quantize_model,
    save_model,
    with_uint8_activations,
)
from .sensitivity import LayerSensitivity, rank_convs
from .steps import ProgressFactory, Steps, check_layer_names, deploy_checked


@dataclass(frozen=True)
class QuantizeOptions:
    """How :func:`quantize_checkpoint` quantizes and checks (``tools/quantize.py``'s flags).

    The defaults are measured on the demo's PSPNet-A0 (docs/quantization.md).

    Attributes:
        calib_images: Calibration images, through the config's train pipeline.
        calib_method: A key of :data:`~.onnx_quant.CALIBRATION_METHODS`.
        per_channel: One weight scale per output channel.
        eval_images: Val images the INT8 model is measured on against the float one.
        max_miou_drop: Largest accepted mIoU drop (float minus INT8, in mIoU points).
        sensitivity: Rank the convs by how much each alone moves the logits.
        keep_float: Leave the this many most sensitive convs in float32 (ranks them).
        keep_float_layers: Leave these convs (PyTorch module names) in float32.
        seed: Seeds the train pipeline's random transforms.
        activations: How the written model stores activations: ``int8``, ``uint8`` (the
            same numbers, ONNX Runtime's fast form on VNNI/AMX CPUs) or ``auto`` (by the host).
    """

    calib_images: int = 8
    calib_method: str = "minmax"
    per_channel: bool = True
    eval_images: int = 20
    max_miou_drop: float = 1.0
    sensitivity: bool = False
    keep_float: int = 0
    keep_float_layers: tuple[str, ...] = ()
    seed: int = 0
    activations: str = "auto"

    def __post_init__(self) -> None:
        if self.activations not in ACTIVATION_FORMATS:
            raise UsageError(
                f"--activations {self.activations!r} is not known; pass one of "
                f"{', '.join(ACTIVATION_FORMATS)}."
            )
        if self.calib_method not in CALIBRATION_METHODS:
            raise UsageError(
                f"--calib-method {self.calib_method!r} is not known; pass one of "
                f"{', '.join(CALIBRATION_METHODS)}."
            )
        for flag, value in (
            ("--calib-images", self.calib_images),
            ("--eval-images", self.eval_images),
        ):
            if value < 1:
                raise UsageError(f"{flag} must be at least 1, got {value}.")
        if self.keep_float < 0:
            raise UsageError(f"--keep-float must be 0 or more, got {self.keep_float}.")
        if not self.max_miou_drop >= 0:
            raise UsageError(f"--max-miou-drop must be 0 or more, got {self.max_miou_drop}.")

    @property
    def ranks_convs(self) -> bool:
        return self.sensitivity or self.keep_float > 0


@dataclass
class QuantizeReport:
    """What :func:`quantize_checkpoint` measured and wrote.

    Attributes:
        onnx: The INT8 model (in ``out_dir`` when :attr:`written`).
        report: Its JSON report (in ``out_dir`` when written).
        evaluation: INT8 against float on the val images.
        options: The settings used.
        activations: How the written model stores activations (``int8`` or ``uint8``).
        calibration_images: Images calibrated on: ``options.calib_images``, or the whole
            training set when it holds fewer.
        kept_float: Convs left in float32 (by name, then by rank).
        sensitivity: Every conv, most sensitive first (when ranked).
        convs: Convs in the model.
        seconds: Wall time of each step.
        written: Whether the files were put in place (only when within max_miou_drop).
        removed_leftovers: Staging folders of killed runs that were removed.
    """

    onnx: Path
    report: Path
    evaluation: Evaluation | None = None
    options: QuantizeOptions = field(default_factory=QuantizeOptions)
    calibration_images: int = 0
    activations: str = "int8"
    kept_float: list[str] = field(default_factory=list)
    sensitivity: list[LayerSensitivity] | None = None
    convs: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    written: bool = False
    removed_leftovers: list[Path] = field(default_factory=list)

    @property
    def miou_drop(self) -> float:
        return -self.evaluation.miou_change

    @property
    def passed(self) -> bool:
        return self.evaluation is not None and self.miou_drop <= self.options.max_miou_drop


def quantize_checkpoint(
    cfg: Config,
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: QuantizeOptions,
    progress: ProgressFactory | None = None,
) -> QuantizeReport:
    """Quantizes a checkpoint's deployed segmentor to INT8 and measures it against float32.

    Writes ``<config stem>_int8.onnx`` and ``<config stem>_int8.json`` to ``out_dir`` only
    when the INT8 mIoU is within ``options.max_miou_drop`` of the float one; staged in a
    hidden folder inside ``out_dir`` until then, so an error, Ctrl-C or kill leaves nothing.

    Args:
        cfg: The checkpoint's config (training or ``*_deploy.py``).
        checkpoint: Any checkpoint form :func:`repvgg_seg.loader.load_segmentor` loads.
        progress: Makes the progress callbacks of the long steps (None: silent).

    Raises:
        CheckpointError: The checkpoint does not fit the config.
        DatasetUnavailableError: The training or val set is missing or empty.
        FusionMismatchError: The deployed model does not reproduce the trained one.
        ValueError: A ``--keep-float-layers`` name is not a conv of the model.
        NotADirectoryError, IsADirectoryError, PermissionError: ``out_dir`` is unusable.
        WorkDirBusyError: Another tools/quantize.py run writes into ``out_dir``.
    """
    steps = Steps(progress)
    stem = Path(config_name(cfg)).stem
    folder = OutputFolder(out_dir, stem, "int8", (".onnx", ".json"), "tools/quantize.py")
    folder.check()  # an unusable out_dir, like missing datasets, ends the run before any long step
    refuse_bf16_deployment(cfg, checkpoint, "quantization exports and calibrates float32 weights")
    calibration_set, val_set = calibration_dataset(cfg), evaluation_dataset(cfg)
    deployed = deploy_checked(load_segmentor(cfg, checkpoint), next(evaluation_samples(val_set, 1)))
    check_layer_names(options.keep_float_layers, deployed)
    steps.done("deploy")

    with folder:
        staging = folder.staging
        report = QuantizeReport(staging / f"{stem}_int8.onnx", staging / f"{stem}_int8.json")
        report.options = options
        report.removed_leftovers = folder.removed_leftovers
        export_onnx(deployed, staging / "float.onnx", torch.randn(1, 3, *input_size_of(cfg)))
        prepared_path = staging / "float_prepared.onnx"
        prepared = prepare_float_model(staging / "float.onnx", prepared_path)
        report.convs = len(conv_names(prepared))
        steps.done("export")

        # One bar: reading the images through the train pipeline, then running them.
        # A training set smaller than --calib-images is used whole, and said so.
        report.calibration_images = min(options.calib_images, len(calibration_set))
        bar = steps.bar("calibration", 2 * report.calibration_images)
        images = calibration_inputs(
            calibration_set, deployed.data_preprocessor, options.calib_images, options.seed, bar
        )
        ranges = collect_ranges(prepared_path, images, options.calib_method, staging, bar)
        steps.done("calibration")
        _choose_float_convs(report, prepared, ranges, images, steps)
        quantized = quantize_model(
            prepared, ranges, options.per_channel, nodes_to_exclude=report.kept_float
        )
        report.activations = activation_format(options.activations, cpu_info()[1])
        if report.activations == "uint8":
            quantized = with_uint8_activations(quantized)
        write_atomically(report.onnx, lambda file: save_model(quantized, file))
        steps.done("quantize")

        report.evaluation = compare_segmentors(
            build_onnx_segmentor(cfg, prepared_path),
            build_onnx_segmentor(cfg, report.onnx),
            evaluation_samples(val_set, options.eval_images),
            val_set.metainfo,
            steps.bar("evaluation", min(options.eval_images, len(val_set))),
        )
        steps.done("evaluation")
        report.seconds = steps.seconds
        publish_if_passed(report, folder, lambda: describe(report, cfg, checkpoint))
    return report


def publish_if_passed(
    report: QuantizeReport, folder: OutputFolder, description: Callable[[], dict]
) -> None:
    """Within ``max_miou_drop``: writes the JSON report (``description()``) beside the INT8
    model in ``folder``'s staging and publishes both into OUT_DIR (``report`` then names the
    published files and is marked written); otherwise leaves OUT_DIR as it was."""
    if not report.passed:
        return
    text = json.dumps(description(), indent=2) + "\n"
    write_atomically(report.report, lambda file: file.write(text.encode()))
    report.onnx, report.report = folder.publish([report.onnx, report.report])
    report.written = True


def _choose_float_convs(
    report: QuantizeReport,
    prepared: onnx.ModelProto,
    ranges,
    images: list,
    steps: Steps,
) -> None:
    """Sets ``report.kept_float``: the named convs, then (ranking them) the most sensitive."""
    options = report.options
    report.kept_float = list(options.keep_float_layers)
    if not options.ranks_convs:
        return
    bar = steps.bar("sensitivity (one conv quantized at a time)", report.convs)
    report.sensitivity = rank_convs(prepared, ranges, options.per_channel, images, bar)
    ranked = [layer.name for layer in report.sensitivity if layer.name not in report.kept_float]
    report.kept_float += ranked[: options.keep_float]
    steps.done("sensitivity")


def describe(report: QuantizeReport, cfg: Config, checkpoint: str | os.PathLike) -> dict:
    """The JSON report: the measurement, the settings, the host and the library versions."""
    evaluation = report.evaluation
    cpu, flags = cpu_info()
    return {
        "config": config_name(cfg),
        "checkpoint": os.fspath(checkpoint),
        "onnx": report.onnx.name,
        "evaluation": {
            "val_images": evaluation.images,
            "float32": evaluation.float_metrics,
            "int8": evaluation.int8_metrics,
            "miou_change": round(evaluation.miou_change, 4),
            "pixel_agreement_percent": round(evaluation.pixel_agreement, 4),
            "changed_pixels": evaluation.changed_pixels,
            "pixels": evaluation.pixels,
            "max_miou_drop": report.options.max_miou_drop,
        },
        "quantization": {
            "library": "onnxruntime.quantization (static)",
            "format": "QDQ",
            "activations": f"{report.activations} (asymmetric)",
            "weights": "int8 (symmetric)",
            "per_channel": report.options.per_channel,
            "calibration": {
                "images": report.calibration_images,
                "images_requested": report.options.calib_images,
                "method": report.options.calib_method,
                "source": "train_dataloader.dataset with its train pipeline, seeded",
                "seed": report.options.seed,
            },
            "convs": report.convs,
            "kept_float": report.kept_float,
        },
        "sensitivity": None
        if report.sensitivity is None
        else [asdict(layer) for layer in report.sensitivity],
        "host": {"cpu": cpu, "flags": flags, "machine": platform.machine()},
        "versions": {
            "onnxruntime": onnxruntime.__version__,
            "onnx": onnx.__version__,
            "torch": torch.__version__,
            "mmsegmentation": mmseg.__version__,
        },
        "seconds": {step: round(value, 1) for step, value in report.seconds.items()},
    }
