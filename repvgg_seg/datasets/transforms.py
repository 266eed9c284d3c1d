"""The two steps of hszhao/semseg's training augmentation that mmseg has no transform for.

RepVGG's PSPNet example (``example_pspnet.py``) takes its PSPNet from hszhao/semseg, whose
Cityscapes training pipeline is: random scale 0.5-2.0, random rotation within +-10 degrees,
Gaussian blur, horizontal flip, 713x713 random crop. mmseg has the scale (``RandomResize``),
the rotation (``RandomRotate``) and the flip (``RandomFlip``); these two complete it:

- ``RandomGaussianBlur``: with probability 0.5, a 5x5 Gaussian blur (sigma derived from the
  kernel size, as OpenCV does for sigma 0).
- ``PadAndRandomCrop``: an image smaller than the crop is first padded evenly on both sides
  (image with the mean pixel, labels with the ignore index), then cropped at a random
  position. mmseg's ``RandomCrop`` never pads: a small image stays small, and the data
  preprocessor later pads it at the bottom and right only.

Importing this module registers both in mmseg's ``TRANSFORMS``.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS

from ..errors import UsageError


def _check_probability(name: str, prob: float) -> None:
    if not 0.0 <= prob <= 1.0:
        raise UsageError(f"{name}: prob must be in [0, 1], got {prob}.")


@TRANSFORMS.register_module()
class RandomGaussianBlur(BaseTransform):
    """Blurs the image (not the labels) with a Gaussian kernel, with probability ``prob``.

    Args:
        prob: Probability of blurring.
        kernel_size: Odd kernel side in pixels; sigma follows from it (OpenCV, sigma 0).
    """

    def __init__(self, prob: float = 0.5, kernel_size: int = 5) -> None:
        _check_probability("RandomGaussianBlur", prob)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise UsageError(
                f"RandomGaussianBlur: kernel_size must be a positive odd number, got "
                f"{kernel_size}."
            )
        self.prob = prob
        self.kernel_size = kernel_size

    def transform(self, results: dict) -> dict:
        if np.random.rand() < self.prob:
            size = (self.kernel_size, self.kernel_size)
            results["img"] = cv2.GaussianBlur(results["img"], size, 0)
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prob={self.prob}, kernel_size={self.kernel_size})"


@TRANSFORMS.register_module()
class PadAndRandomCrop(BaseTransform):
    """Pads to at least ``crop_size`` (evenly on both sides), then crops at random.

    Args:
        crop_size: ``(height, width)`` of the output.
        pad_val: Image padding: one value, or one per channel in the image's channel order
            (BGR after ``LoadImageFromFile``).
        seg_pad_val: Label padding, normally the ignore index.
    """

    def __init__(
        self,
        crop_size: Sequence[int],
        pad_val: float | Sequence[float] = 0.0,
        seg_pad_val: int = 255,
    ) -> None:
        if len(crop_size) != 2 or min(crop_size) < 1:
            raise UsageError(
                f"PadAndRandomCrop: crop_size must be (height, width) with both >= 1, got "
                f"{tuple(crop_size)}."
            )
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.pad_val = pad_val
        self.seg_pad_val = seg_pad_val

    def _border(self, array: np.ndarray, padding: tuple[int, int, int, int], value) -> np.ndarray:
        if isinstance(value, Sequence):
            value = tuple(float(v) for v in value)
        else:
            value = (float(value),) * 4
        return cv2.copyMakeBorder(array, *padding, cv2.BORDER_CONSTANT, value=value)

    def transform(self, results: dict) -> dict:
        crop_h, crop_w = self.crop_size
        height, width = results["img"].shape[:2]
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        seg_keys = results.get("seg_fields", [])
        if pad_h or pad_w:
            padding = (pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2)
            results["img"] = self._border(results["img"], padding, self.pad_val)
            for key in seg_keys:
                results[key] = self._border(results[key], padding, self.seg_pad_val)
            height, width = height + pad_h, width + pad_w
        top = np.random.randint(0, height - crop_h + 1)
        left = np.random.randint(0, width - crop_w + 1)
        window = (slice(top, top + crop_h), slice(left, left + crop_w))
        results["img"] = results["img"][window]
        for key in seg_keys:
            results[key] = results[key][window]
        results["img_shape"] = results["img"].shape[:2]
        return results

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(crop_size={self.crop_size}, pad_val={self.pad_val}, "
            f"seg_pad_val={self.seg_pad_val})"
        )
