"""The whole deploy step: load, fuse, stage, rebuild, verify, export, publish."""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from mmengine.config import Config
from mmseg.models.segmentors import EncoderDecoder

from ..atomic_io import save_atomically
from ..checkpoint import meta_of, read_checkpoint
from ..equivalence import Agreement
from ..errors import UsageError
from ..loader import config_name, input_size_of, load_segmentor, read_config
from .onnx_export import compare_onnx, export_onnx
from .publish import OutputFolder, new_deploy_id
from .segmentor import (
    PRECISIONS,
    deploy_segmentor,
    make_deploy_config,
    refuse_bf16_deployment,
    to_bfloat16,
)
from .verify import compare_on_batch, compare_on_tensor, first_dataset_batch
from .winograd import MIN_CHANNELS_PER_GROUP, winograd_mode

logger = logging.getLogger(__name__)

# bfloat16 keeps 8 significant bits: its unit round-off is 2**-8 (0.4 %), 2**16 times
# float32's, so a bf16 model is judged against bf16's own precision, not the fusion
# criterion. Measured on the synthetic A0 PSPNet (25 layers), the bf16 logits differ from
# float32 by 2.5 to 3.3 units of 2**-8 of the largest logit (docs/deploy.md); 16 units
# (6 %) leave room for deeper networks while a broken model moves them further.
BF16_UNIT_ROUNDOFF = 2.0**-8
BF16_RTOL = 16 * BF16_UNIT_ROUNDOFF


@dataclass(frozen=True)
class DeployOptions:
    """How :func:`deploy_checkpoint` deploys and checks (``tools/deploy.py``'s options).

    Attributes:
        fuse_conv_bn: Also fold conv+BN pairs in the heads and non-RepVGG backbones.
        random_size: ``(H, W)`` of the random check; default the config's crop size.
        check_real_image: Also compare full predictions on the dataset's first image.
        onnx: Also export to ONNX and compare ONNX Runtime with PyTorch (float32 only).
        opset: ONNX opset (>= 17; torch 2.14's exporter writes 18 natively).
        onnx_atol: Largest accepted ONNX Runtime vs PyTorch logit difference.
        winograd: How the deployed model runs eligible 3x3 convs by Winograd F(4x4, 3x3) on
            CPU: ``auto`` (where it is faster on the host), ``on``, ``off`` (True is
            ``auto``); the checks then include its round-off (float32 only).
        winograd_min_channels: Channels per group a conv needs for Winograd.
        precision: ``"fp32"``, or ``"bf16"``: the deployed model holds bfloat16 weights and
            runs bfloat16 channels-last activations; its agreement with the float32 model is
            measured against :data:`BF16_RTOL`.
        device: Where the trained and the deployed model are compared (ONNX always on CPU).
    """

    fuse_conv_bn: bool = True
    random_size: tuple[int, int] | None = None
    check_real_image: bool = True
    onnx: bool = False
    opset: int = 18
    onnx_atol: float = 1e-3
    winograd: bool | str = "off"
    winograd_min_channels: int = MIN_CHANNELS_PER_GROUP
    precision: str = "fp32"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UsageError(
                f"precision {self.precision!r} is not supported; pass one of "
                f"{', '.join(PRECISIONS)}."
            )
        if self.onnx and self.precision != "fp32":
            raise UsageError(
                "ONNX export writes the float32 model; deploy once with --onnx and once with "
                "--bf16 (into another output folder) to get both."
            )
        if self.opset < 17:
            raise UsageError(f"ONNX opset {self.opset} is too old; pass 17 or newer.")
        winograd_mode(self.winograd)  # raises UsageError for an unknown mode
        if self.winograd_min_channels < 1:
            raise UsageError(
                f"winograd_min_channels must be at least 1, got {self.winograd_min_channels}."
            )
        if self.random_size is not None and min(self.random_size) < 1:
            raise UsageError(f"random_size {self.random_size} must be positive.")


@dataclass
class DeployReport:
    """What :func:`deploy_checkpoint` checked and wrote.

    Attributes:
        checkpoint: The deployed checkpoint (written only if :attr:`passed`).
        config: The deploy config (loads ``checkpoint`` strictly; written only if passed).
        folded_pairs: Conv+BN pairs folded outside the RepVGG blocks.
        winograd_convs: Convs the deployed model runs by Winograd F(4x4, 3x3) on CPU.
        random_input: Fusion check (float32) of the decode-head logits on a random batch.
        real_image: Fusion check of full predictions on the dataset's first image (or None).
        precision: The deployed model's precision.
        precision_checks: For bf16, the model rebuilt from the written files against the
            float32 trained model (tolerance :data:`BF16_RTOL`), named.
        onnx: The ONNX file (or None).
        onnx_agreements: ONNX Runtime vs PyTorch, one per checked input.
        onnx_atol: Largest accepted ONNX Runtime vs PyTorch logit difference.
        removed_leftovers: Staging folders of killed deploy runs that were removed.
        removed_earlier: Files of an earlier deploy of the same config that this one does
            not write (an ``.onnx`` beside a new bf16 ``.pth``), removed when publishing.
        written: Whether the files were put in place (only when every check passed).
    """

    checkpoint: Path
    config: Path
    folded_pairs: int
    winograd_convs: int
    random_input: Agreement
    real_image: Agreement | None = None
    precision: str = "fp32"
    precision_checks: list[tuple[str, Agreement]] = field(default_factory=list)
    onnx: Path | None = None
    onnx_agreements: list[Agreement] | None = None
    onnx_atol: float = 1e-3
    removed_leftovers: list[Path] = field(default_factory=list)
    removed_earlier: list[Path] = field(default_factory=list)
    written: bool = False

    @property
    def fusion_checks(self) -> list[tuple[str, Agreement]]:
        """The deployed-vs-trained comparisons in float32, named."""
        checks = [("random input", self.random_input)]
        if self.real_image is not None:
            checks.append(("dataset image", self.real_image))
        return checks

    def onnx_passed(self, agreement: Agreement) -> bool:
        """Whether one ONNX Runtime vs PyTorch comparison is within :attr:`onnx_atol`."""
        return agreement.max_abs_diff <= self.onnx_atol

    @property
    def passed(self) -> bool:
        """Fusion (:mod:`repvgg_seg.equivalence`), bf16 and ONNX checks all pass."""
        onnx_ok = all(self.onnx_passed(agreement) for agreement in self.onnx_agreements or [])
        checks = self.fusion_checks + self.precision_checks
        return all(agreement.ok for _, agreement in checks) and onnx_ok


def deploy_checkpoint(
    config: str | os.PathLike | Config,
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: DeployOptions | None = None,
) -> DeployReport:
    """Deploys a checkpoint, verifies the result, and writes checkpoint + config.

    Any checkpoint form :func:`repvgg_seg.loader.load_segmentor` loads is accepted: a
    training-time or fused one with its training config, or a deployed one with its deploy
    config (deployed again, e.g. in bfloat16). Files are staged in a hidden folder inside
    ``out_dir`` (:class:`~repvgg_seg.deploy.publish.OutputFolder`); the checks rebuild the
    deployed model from those files (strictly), so they check exactly what a user will
    load. Only when every check passes (``report.passed``) are the files published, as one
    set replacing any earlier deploy of the config; otherwise nothing in ``out_dir`` changes.

    Args:
        config: The config the checkpoint was made with.
        checkpoint: The checkpoint to deploy.
        out_dir: Where ``<config stem>_deploy.{pth,py[,onnx]}`` are written.
        options: How to deploy and check (default :class:`DeployOptions`).

    Raises:
        CheckpointError: The checkpoint cannot be read or does not fit the config.
        DatasetUnavailableError: ``check_real_image`` and the config's dataset is missing.
        NotADirectoryError, IsADirectoryError, PermissionError: ``out_dir`` is unusable.
        WorkDirBusyError: Another deploy is writing into ``out_dir``.
    """
    options = options or DeployOptions()
    cfg = read_config(config)
    stem = Path(config_name(config)).stem
    folder = OutputFolder(out_dir, stem)
    folder.check()  # before the slow part
    contents = read_checkpoint(checkpoint)
    refuse_bf16_deployment(
        cfg, checkpoint, "deploy verifies against the float32 model it starts from", contents
    )
    reference = load_segmentor(cfg, checkpoint, contents=contents)
    deployed = copy.deepcopy(reference)
    pairs = deploy_segmentor(deployed, torch.randn(1, 3, 64, 64), options.fuse_conv_bn)
    random_size = options.random_size or input_size_of(cfg)
    # Fails here, before any file is written, when the dataset is missing.
    batch = first_dataset_batch(cfg) if options.check_real_image else None
    random_input = torch.randn(1, 3, *random_size, generator=torch.Generator().manual_seed(0))
    device = torch.device(options.device)
    reference = reference.to(device)

    with folder:
        deploy_id = new_deploy_id()
        deploy_cfg = make_deploy_config(
            cfg, pairs, options.winograd, options.winograd_min_channels, options.precision
        )
        paths = [folder.staging / name for name in (f"{stem}_deploy.pth", f"{stem}_deploy.py")]
        deploy_cfg.load_from = str(Path(out_dir) / paths[0].name)
        deploy_cfg.deploy_id = deploy_id
        if options.precision == "bf16":
            # The fusion itself is checked in float32; the bf16 model against bf16 precision.
            fusion = _fusion_checks(reference, deployed.to(device), random_input, batch)
            to_bfloat16(deployed.cpu())
        meta = {
            "dataset_meta": meta_of(contents).get("dataset_meta"),
            "deployed_from": str(checkpoint),
            "deploy_id": deploy_id,
            "folded_conv_bn": len(pairs),
            "precision": options.precision,
        }
        save_atomically({"meta": meta, "state_dict": deployed.state_dict()}, paths[0])
        deploy_cfg.dump(str(paths[1]))

        # Check exactly what a user will load: rebuilt from the written files, strictly.
        rebuilt = load_segmentor(paths[1], paths[0], device=device)
        precision_checks = []
        if options.precision == "bf16":
            precision = _fusion_checks(reference, rebuilt, random_input, batch, BF16_RTOL)
            precision_checks = [
                (f"bf16 vs float32, {name}", agreement)
                for name, agreement in zip(("random input", "dataset image"), precision)
                if agreement is not None
            ]
        else:
            fusion = _fusion_checks(reference, rebuilt, random_input, batch)
        report = DeployReport(
            checkpoint=paths[0],
            config=paths[1],
            folded_pairs=len(pairs),
            winograd_convs=len(getattr(rebuilt, "winograd_convs", [])),
            random_input=fusion[0],
            real_image=fusion[1],
            precision=options.precision,
            precision_checks=precision_checks,
            onnx_atol=options.onnx_atol,
            removed_leftovers=folder.removed_leftovers,
        )
        if options.onnx:
            report.onnx = paths[0].with_suffix(".onnx")
            onnx_inputs = _onnx_inputs(rebuilt.cpu(), random_input, batch)
            export_onnx(rebuilt, report.onnx, random_input, options.opset, {"deploy_id": deploy_id})
            report.onnx_agreements = compare_onnx(report.onnx, rebuilt, onnx_inputs)
        _publish(report, folder)
    return report


def _fusion_checks(
    reference: EncoderDecoder,
    candidate: EncoderDecoder,
    random_input: torch.Tensor,
    batch: dict | None,
    rtol: float | None = None,
) -> tuple[Agreement, Agreement | None]:
    """``candidate`` against ``reference`` on the random input and the dataset image."""
    kwargs = {} if rtol is None else {"rtol": rtol}
    on_random = compare_on_tensor(reference, candidate, random_input, **kwargs)
    on_image = None if batch is None else compare_on_batch(reference, candidate, batch, **kwargs)
    return on_random, on_image


def _onnx_inputs(
    rebuilt: EncoderDecoder, random_input: torch.Tensor, batch: dict | None
) -> list[torch.Tensor]:
    """The inputs ONNX Runtime is compared on: the random one, another size, the image."""
    height, width = random_input.shape[-2:]
    inputs = [random_input, torch.randn(1, 3, height // 2 + 8, width + 16)]
    if batch is not None:
        inputs.append(rebuilt.data_preprocessor(copy.deepcopy(batch), False)["inputs"])
    return inputs


def _publish(report: DeployReport, folder: OutputFolder) -> None:
    """Publishes the staged files if every check passed (``report.written``)."""
    if not report.passed:
        logger.info("verification failed: nothing written to %s", folder.path)
        return
    staged = [report.checkpoint, report.config] + ([report.onnx] if report.onnx else [])
    folder.publish(staged)
    report.removed_earlier = folder.removed_earlier
    report.checkpoint = folder.path / report.checkpoint.name
    report.config = folder.path / report.config.name
    if report.onnx is not None:
        report.onnx = folder.path / report.onnx.name
    report.written = True
