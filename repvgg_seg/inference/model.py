"""A segmentor ready for inference from any of its checkpoint forms, and its predictions.

Every checkpoint form loads through :func:`repvgg_seg.loader.load_segmentor` (training-time
with ``fuse=True`` re-parameterizing after loading, fused, ``tools/deploy.py`` output with
its ``*_deploy.py`` config); this module adds what inference needs on top: a
``test_pipeline`` and at most 255 classes (label maps are 8-bit PNGs).

Prediction is mmseg's :func:`mmseg.apis.inference_model`: the config's ``test_pipeline``
(its resize) and ``test_cfg`` (whole or slide), with the logits resized back to each
input's own size.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from mmengine.config import Config
from mmseg.apis import inference_model
from mmseg.models.segmentors import BaseSegmentor

from ..errors import UsageError
from ..loader import config_name, load_segmentor, read_config


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a device, checked to exist here.

    Raises:
        UsageError: Not a device name, or CUDA (that GPU) is not available.
    """
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise UsageError(f"Unknown device {device!r}; pass cpu, cuda or cuda:N.") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"Device {device!r}: CUDA is not available here; pass --device cpu.")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise UsageError(
                f"Device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here."
            )
    elif resolved.type != "cpu":
        raise UsageError(f"Device {device!r} is not supported; pass cpu, cuda or cuda:N.")
    return resolved


def load_inference_model(
    config: str | os.PathLike | Config,
    checkpoint: str | os.PathLike,
    device: str | torch.device = "cpu",
    fuse: bool = False,
) -> BaseSegmentor:
    """The segmentor of :func:`repvgg_seg.loader.load_segmentor`, checked fit for inference.

    Args:
        config: The config the checkpoint was made with (a deploy config for a
            ``tools/deploy.py`` checkpoint).
        checkpoint: A training-time, fused or deployed checkpoint.
        device: Where the model runs.
        fuse: Re-parameterize the RepVGG blocks after loading (no-op when already fused).

    Returns:
        The segmentor in eval mode on ``device``, with ``cfg`` set (mmseg's inference API
        reads its ``test_pipeline``).

    Raises:
        CheckpointError: The checkpoint cannot be read or does not fit the config.
        UsageError: The config has no ``test_pipeline``, or predicts more than 255 classes.
    """
    cfg = read_config(config)
    if "test_pipeline" not in cfg:
        raise UsageError(
            f"Config {config_name(config)!r} has no test_pipeline (the loading and resizing "
            "of test images); inference needs one, like every mmseg config has."
        )
    model = load_segmentor(cfg, checkpoint, device=device, fuse=fuse)
    if num_classes_of(model) > 255:
        raise UsageError(
            f"Config {config_name(config)!r} predicts {num_classes_of(model)} classes; label "
            "maps are written as 8-bit PNGs, which hold at most 255."
        )
    return model


def num_classes_of(model: BaseSegmentor) -> int:
    """The number of classes the segmentor predicts."""
    return int(model.decode_head.num_classes)


@torch.no_grad()
def predict_labels(model: BaseSegmentor, images: list[np.ndarray]) -> list[np.ndarray]:
    """Predicts the train-id label map of each image, at the image's own size.

    Args:
        model: From :func:`load_inference_model`.
        images: ``H x W x 3`` uint8 RGB arrays, all of one size (one batch).

    Returns:
        One ``H x W`` uint8 label map per image.
    """
    if len({image.shape for image in images}) > 1:
        raise ValueError(
            f"A batch needs images of one size, got {sorted({i.shape for i in images})}."
        )
    # mmseg's pipeline takes BGR arrays, as cv2/mmcv read them; the data preprocessor of our
    # configs converts them back to RGB.
    samples = inference_model(model, [np.ascontiguousarray(image[:, :, ::-1]) for image in images])
    return [sample.pred_sem_seg.data[0].to(torch.uint8).cpu().numpy() for sample in samples]
