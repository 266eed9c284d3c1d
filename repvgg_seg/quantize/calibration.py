"""Calibration and evaluation images, read through the config's own pipelines."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate

from ..deploy import DatasetUnavailableError, build_split_dataset
from ..errors import UsageError

Progress = Callable[[], None]


def build_dataset(cfg: Config, split: str, needed_by: str):
    """The config's ``{split}_dataloader`` dataset with its pipeline.

    Raises:
        DatasetUnavailableError: The config has no such dataset, or it is missing or empty;
            the message says what needs it.
    """
    try:
        return build_split_dataset(cfg, split)
    except (ValueError, DatasetUnavailableError) as error:
        raise DatasetUnavailableError(
            f"{str(error).rstrip('.')} (config '{cfg.filename}'). {needed_by} reads it: "
            "prepare the dataset or pass the config's data_root with --cfg-options."
        ) from error


def spread_indices(length: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(length)`` (all of them if fewer)."""
    if count >= length:
        return list(range(length))
    return [int(i) for i in np.linspace(0, length - 1, count).round()]


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seeds Python's and NumPy's global generators (mmcv's random transforms use them) and
    restores their states afterwards."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def calibration_dataset(cfg: Config):
    """The config's training set with its train pipeline (build it before any long work).

    Raises:
        DatasetUnavailableError: The training set is missing or empty.
    """
    return build_dataset(cfg, "train", "Calibration (--calib-images)")


def calibration_inputs(
    dataset,
    data_preprocessor: torch.nn.Module,
    num_images: int,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[np.ndarray]:
    """Normalized ``1,3,H,W`` float32 images through the config's train pipeline.

    The images are spread over the training set; the pipeline's random resize, crop, flip
    and photometric distortion are seeded, so a run is repeatable. The model's data
    preprocessor normalizes and pads them as in training.

    Args:
        dataset: From :func:`calibration_dataset`.
        data_preprocessor: The segmentor's.
        num_images: How many images, spread over the dataset.
        seed: Seeds the pipeline's random transforms.
        progress: Called once per image.

    Raises:
        ValueError: ``num_images`` is not positive.
    """
    if num_images < 1:
        raise UsageError(f"--calib-images must be at least 1, got {num_images}.")
    inputs = []
    with seeded(seed), torch.no_grad():
        for index in spread_indices(len(dataset), num_images):
            batch = data_preprocessor(pseudo_collate([dataset[index]]), True)
            inputs.append(batch["inputs"].float().cpu().numpy())
            if progress is not None:
                progress()
    return inputs


def evaluation_dataset(cfg: Config):
    """The config's val set with its test pipeline (build it before any long work).

    Raises:
        DatasetUnavailableError: The val set is missing or empty.
    """
    return build_dataset(cfg, "val", "The INT8 evaluation (--eval-images)")


def evaluation_samples(dataset, num_images: int) -> Iterator[dict]:
    """Collated one-image batches of ``num_images`` images spread over ``dataset``."""
    if num_images < 1:
        raise UsageError(f"--eval-images must be at least 1, got {num_images}.")
    for index in spread_indices(len(dataset), num_images):
        yield pseudo_collate([dataset[index]])
