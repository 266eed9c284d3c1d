"""The whole deploy step: load, fuse, save, rebuild, verify, export."""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from mmengine.config import Config
from mmseg.models.segmentors import EncoderDecoder

from ..atomic_io import save_atomically
from ..checkpoint import describe_key_mismatch, read_checkpoint, state_dict_of
from .onnx_export import compare_onnx, export_onnx
from .segmentor import build_segmentor, deploy_segmentor, make_deploy_config
from .verify import (
    Agreement,
    compare_on_batch,
    compare_on_tensor,
    first_dataset_batch,
)
from .winograd import MIN_CHANNELS_PER_GROUP

logger = logging.getLogger(__name__)


@dataclass
class DeployReport:
    """What :func:`deploy_checkpoint` checked and wrote.

    Attributes:
        checkpoint: The deployed checkpoint (written only if :attr:`passed`).
        config: The deploy config (loads ``checkpoint`` strictly; written only if passed).
        folded_pairs: Conv+BN pairs folded outside the RepVGG blocks.
        winograd_convs: Convs the deployed model runs by Winograd F(4x4, 3x3) on CPU.
        random_input: Agreement of the decode-head logits on a random batch.
        real_image: Agreement of full predictions on the dataset's first image (or None).
        onnx: The ONNX file (or None).
        onnx_agreements: ONNX Runtime vs PyTorch, one per checked input.
        onnx_atol: Largest accepted ONNX Runtime vs PyTorch logit difference.
        written: Whether the files were put in place (only when every check passed).
    """

    checkpoint: Path
    config: Path
    folded_pairs: int
    winograd_convs: int
    random_input: Agreement
    real_image: Agreement | None = None
    onnx: Path | None = None
    onnx_agreements: list[Agreement] | None = None
    onnx_atol: float = 1e-3
    written: bool = False

    @property
    def fusion_checks(self) -> list[tuple[str, Agreement]]:
        """The deployed-vs-trained comparisons, named."""
        checks = [("random input", self.random_input)]
        if self.real_image is not None:
            checks.append(("dataset image", self.real_image))
        return checks

    @property
    def passed(self) -> bool:
        """The fusion checks pass (:mod:`repvgg_seg.equivalence`) and ONNX is within atol."""
        onnx_ok = all(a.max_abs_diff <= self.onnx_atol for a in self.onnx_agreements or [])
        return all(agreement.ok for _, agreement in self.fusion_checks) and onnx_ok


def load_segmentor(
    config: str | Path | Config, checkpoint: str | Path, contents: object | None = None
) -> EncoderDecoder:
    """Builds a config's segmentor and loads a checkpoint into it strictly (eval mode).

    Args:
        contents: ``checkpoint`` as :func:`read_checkpoint` returned it, when the caller has
            already read it (the file is then not read again).
    """
    model = build_segmentor(config)
    if contents is None:
        contents = read_checkpoint(checkpoint)
    state = state_dict_of(contents, checkpoint)
    mismatch = describe_key_mismatch(model.state_dict(), state)
    if mismatch is not None:
        name = config.filename if isinstance(config, Config) else str(config)
        raise ValueError(
            f"Checkpoint {str(checkpoint)!r} does not fit the model of config {name!r} "
            f"(strict load): {mismatch}. Pass the config the checkpoint was trained with."
        )
    model.load_state_dict(state, strict=True)
    model.eval()
    return model


def deploy_checkpoint(
    config: str | Path,
    checkpoint: str | Path,
    out_dir: str | Path,
    fuse_conv_bn: bool = True,
    random_size: tuple[int, int] | None = None,
    check_real_image: bool = True,
    onnx: bool = False,
    opset: int = 18,
    winograd: bool = True,
    winograd_min_channels: int = MIN_CHANNELS_PER_GROUP,
    onnx_atol: float = 1e-3,
    device: str | torch.device = "cpu",
) -> DeployReport:
    """Deploys a trained checkpoint, verifies the result, and writes checkpoint + config.

    Everything is first written to a hidden staging folder inside ``out_dir``; the
    verification rebuilds the deployed model from those files (strictly), so it checks exactly
    what a user will load. Only when every check passes (``report.passed``) are the files
    renamed to their final names; otherwise, or on any error, nothing is left in ``out_dir``.

    Args:
        config: The training config.
        checkpoint: The trained checkpoint (mmengine format or a bare state dict).
        out_dir: Where ``<config stem>_deploy.{pth,py[,onnx]}`` are written.
        fuse_conv_bn: Also fold conv+BN pairs in the heads and non-RepVGG backbones.
        random_size: ``(H, W)`` of the random check; default the config's crop size.
        check_real_image: Also compare full predictions on the dataset's first image.
        onnx: Also export to ONNX and compare ONNX Runtime with PyTorch.
        opset: ONNX opset (>= 17; torch 2.14's exporter writes 18 natively).
        winograd: The deploy config runs eligible 3x3 convs by Winograd F(4x4, 3x3) on CPU;
            the checks below then include its round-off.
        winograd_min_channels: Channels per group a conv needs for Winograd.
        onnx_atol: Largest accepted ONNX Runtime vs PyTorch logit difference.
        device: Where the trained and the deployed model are compared (ONNX always on CPU).
    """
    cfg = Config.fromfile(str(config))
    out_dir, stem, device = Path(out_dir), Path(config).stem, torch.device(device)
    contents = read_checkpoint(checkpoint)
    reference = load_segmentor(cfg, checkpoint, contents)
    deployed = copy.deepcopy(reference)
    pairs = deploy_segmentor(deployed, torch.randn(1, 3, 64, 64), fuse_conv_bn=fuse_conv_bn)
    if random_size is None:
        random_size = tuple(cfg.model.get("data_preprocessor", {}).get("size") or (512, 1024))
    # Fails here, before any file is written, when the dataset is missing.
    batch = first_dataset_batch(cfg) if check_real_image else None

    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{stem}_deploy.", suffix=".staging"))
    try:
        checkpoint_path, config_path = staging / f"{stem}_deploy.pth", staging / f"{stem}_deploy.py"
        deploy_cfg = make_deploy_config(cfg, pairs, winograd, winograd_min_channels)
        deploy_cfg.load_from = str(out_dir / checkpoint_path.name)
        meta = contents.get("meta", {}) if isinstance(contents, dict) else {}
        meta = {
            "dataset_meta": meta.get("dataset_meta"),
            "deployed_from": str(checkpoint),
            "folded_conv_bn": len(pairs),
        }
        save_atomically({"meta": meta, "state_dict": deployed.state_dict()}, checkpoint_path)
        deploy_cfg.dump(str(config_path))

        # Check exactly what a user will load: rebuilt from the written files, strictly.
        rebuilt = load_segmentor(config_path, checkpoint_path).to(device)
        random_input = torch.randn(1, 3, *random_size, generator=torch.Generator().manual_seed(0))
        report = DeployReport(
            checkpoint=checkpoint_path,
            config=config_path,
            folded_pairs=len(pairs),
            winograd_convs=len(getattr(rebuilt, "winograd_convs", [])),
            random_input=compare_on_tensor(reference.to(device), rebuilt, random_input),
            onnx_atol=onnx_atol,
        )
        if batch is not None:
            report.real_image = compare_on_batch(reference, rebuilt, batch)
        if onnx:
            _export_and_check_onnx(report, rebuilt.cpu(), opset, random_input, batch)
        _publish(report, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _export_and_check_onnx(
    report: DeployReport,
    rebuilt: EncoderDecoder,
    opset: int,
    random_input: torch.Tensor,
    batch: dict | None,
) -> None:
    """Exports ``rebuilt`` beside the staged checkpoint and compares ONNX Runtime with it."""
    report.onnx = report.checkpoint.with_suffix(".onnx")
    export_onnx(rebuilt, report.onnx, random_input, opset=opset)
    height, width = random_input.shape[-2:]
    inputs = [random_input, torch.randn(1, 3, height // 2 + 8, width + 16)]
    if batch is not None:
        inputs.append(rebuilt.data_preprocessor(copy.deepcopy(batch), False)["inputs"])
    report.onnx_agreements = compare_onnx(report.onnx, rebuilt, inputs)


def _publish(report: DeployReport, out_dir: Path) -> None:
    """Renames the staged files into ``out_dir`` if every check passed (``report.written``)."""
    staged = [report.checkpoint, report.config] + ([report.onnx] if report.onnx else [])
    if not report.passed:
        logger.error("verification failed: nothing written to %s", out_dir)
        return
    for path in staged:
        os.replace(path, out_dir / path.name)
    report.checkpoint, report.config = (
        out_dir / report.checkpoint.name,
        out_dir / report.config.name,
    )
    if report.onnx is not None:
        report.onnx = out_dir / report.onnx.name
    report.written = True
    logger.info("wrote %s", ", ".join(str(out_dir / path.name) for path in staged))
