"""The INT8 model against the float one: mIoU of both on val images, and pixel agreement."""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from mmengine.logging import MMLogger
from mmseg.evaluation import IoUMetric
from mmseg.models.segmentors import BaseSegmentor

Progress = Callable[[], None]


@dataclass(frozen=True)
class Evaluation:
    """Float and INT8 on the same images, through the config's test pipeline and test_cfg.

    Attributes:
        images: Val images evaluated.
        float_metrics: mmseg ``IoUMetric`` of the float model (``mIoU``, ``mAcc``, ``aAcc``).
        int8_metrics: The same for the INT8 model.
        pixels: Pixels compared (every pixel of every image, at its original size).
        changed_pixels: Pixels whose predicted class differs between the two.
    """

    images: int
    float_metrics: dict[str, float]
    int8_metrics: dict[str, float]
    pixels: int
    changed_pixels: int

    @property
    def miou_change(self) -> float:
        """INT8 mIoU minus float mIoU (negative: INT8 is worse)."""
        return self.int8_metrics["mIoU"] - self.float_metrics["mIoU"]

    @property
    def pixel_agreement(self) -> float:
        """Percentage of pixels predicted the same class by both."""
        return 100.0 * (1.0 - self.changed_pixels / max(self.pixels, 1))

    def describe(self) -> str:
        return (
            f"mIoU float {self.float_metrics['mIoU']:.2f}, INT8 "
            f"{self.int8_metrics['mIoU']:.2f} (change {self.miou_change:+.2f}); pixel "
            f"agreement {self.pixel_agreement:.2f} % on {self.images} val images"
        )


@contextlib.contextmanager
def quiet_metric_tables() -> Iterator[None]:
    """Keeps IoUMetric's per-class table (logged at INFO) off the console."""
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


@torch.no_grad()
def compare_segmentors(
    reference: BaseSegmentor,
    candidate: BaseSegmentor,
    batches: Iterable[dict],
    dataset_meta: dict,
    progress: Progress | None = None,
) -> Evaluation:
    """Runs both segmentors on every batch (their own data preprocessor and test_cfg) and
    scores each with mmseg's ``IoUMetric``.

    Args:
        batches: Collated batches as a dataloader yields them (with ground truth).
        dataset_meta: The dataset's ``metainfo`` (class names for the metric).
        progress: Called once per batch.
    """
    metrics = [IoUMetric(iou_metrics=["mIoU"]), IoUMetric(iou_metrics=["mIoU"])]
    for metric in metrics:
        metric.dataset_meta = dataset_meta
    images = pixels = changed = 0
    for batch in batches:
        predictions = []
        for model, metric in zip((reference, candidate), metrics):
            data = model.data_preprocessor(copy.deepcopy(batch), False)
            samples = model.predict(data["inputs"], data["data_samples"])
            metric.process(batch, [sample.to_dict() for sample in samples])
            predictions.append(torch.stack([s.pred_sem_seg.data for s in samples]))
        images += len(predictions[0])
        pixels += predictions[0].numel()
        changed += int((predictions[0] != predictions[1]).sum())
        if progress is not None:
            progress()
    results = []
    with quiet_metric_tables():
        for metric in metrics:
            results.append({k: float(v) for k, v in metric.compute_metrics(metric.results).items()})
    return Evaluation(images, results[0], results[1], pixels, changed)
