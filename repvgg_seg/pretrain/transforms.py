"""Training and evaluation transforms of the pretraining recipes, all torchvision's.

Training (:class:`Augmentation`, in the order of timm's ``transforms_imagenet_train``, which
the QARepVGG authors use): RandomResizedCrop + horizontal flip, then one of AutoAugment (the
heavy recipe), RandAugment (the qarepvgg recipe) or colour jitter, then normalization and
random erasing. Evaluation: resize, centre crop, normalize. Where torchvision's RandAugment
differs from timm's is listed in docs/qarepvgg.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torchvision import transforms
from torchvision.transforms import InterpolationMode

from ..errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The qarepvgg recipe's RandAugment (timm's syntax, the authors' main.py default --aa).
QAREPVGG_RAND_AUGMENT = "rand-m9-mstd0.5-inc1"
AUTO_AUGMENT_POLICIES = (
    "none",
    *(policy.value for policy in transforms.AutoAugmentPolicy),
    QAREPVGG_RAND_AUGMENT,
)
INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}
# timm's fill of rotated/sheared/translated borders: the ImageNet mean in 8-bit pixels.
AUGMENT_FILL = [round(255 * m) for m in IMAGENET_MEAN]
# timm's magnitudes run 0..10; torchvision's index a grid of this many bins over the same
# ranges, so timm's m9 is torchvision's magnitude 9 of 11 bins (0.9 of each op's maximum).
MAGNITUDE_BINS = 11
_RAND_PART = re.compile(r"^(m|n|mstd|inc)(\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class RandAugmentSpec:
    """A RandAugment spec in timm's syntax, ``rand-m9-n2-mstd0.5-inc1``.

    Attributes:
        magnitude: ``m``, 0..10 (integer: torchvision indexes a grid of 11).
        num_ops: ``n``, ops per image (timm's default 2).
        magnitude_std: ``mstd``; torchvision's RandAugment keeps the magnitude fixed.
        increasing: ``inc1``; torchvision's ops have one fixed scale each.
    """

    magnitude: int
    num_ops: int = 2
    magnitude_std: float = 0.0
    increasing: bool = False

    @classmethod
    def parse(cls, spec: str) -> RandAugmentSpec:
        """Reads ``rand-m<M>[-n<N>][-mstd<S>][-inc<0|1>]``.

        Raises:
            UsageError: Not a RandAugment spec, an unknown part, or a magnitude torchvision
                cannot express.
        """
        parts = spec.split("-")
        matches = [_RAND_PART.match(part) for part in parts[1:]]
        if parts[0] != "rand" or not all(matches):
            raise UsageError(
                f"Cannot read --auto-augment {spec!r}: a RandAugment spec is rand-m<0..10> "
                "with optional -n<ops> -mstd<std> -inc<0|1> (e.g. rand-m9-mstd0.5-inc1)."
            )
        values = {m.group(1): float(m.group(2)) for m in matches}
        magnitude = values.get("m")
        if magnitude is None or magnitude != int(magnitude) or not 0 <= magnitude <= 10:
            raise UsageError(
                f"--auto-augment {spec!r} needs an integer magnitude m0..m10 (torchvision's "
                f"RandAugment has {MAGNITUDE_BINS} magnitude steps)."
            )
        return cls(
            magnitude=int(magnitude),
            num_ops=int(values.get("n", 2)),
            magnitude_std=values.get("mstd", 0.0),
            increasing=values.get("inc", 0.0) == 1.0,
        )


def check_auto_augment(name: str) -> None:
    """Accepts ``'none'``, a torchvision AutoAugment policy or a RandAugment spec.

    Raises:
        UsageError: Anything else; the message lists the choices.
    """
    if name.startswith("rand"):
        RandAugmentSpec.parse(name)
    elif name not in AUTO_AUGMENT_POLICIES:
        raise UsageError(
            f"Unknown --auto-augment policy {name!r}; choose one of "
            f"{', '.join(AUTO_AUGMENT_POLICIES)} or a RandAugment spec rand-m<M>[-n<N>]."
        )


@dataclass(frozen=True)
class Augmentation:
    """The training transform's choices (a recipe's, see :mod:`.recipe`).

    Attributes:
        auto_augment: ``'none'``, a torchvision AutoAugment policy or a RandAugment spec.
        color_jitter: Brightness, contrast and saturation jitter; as in timm, only when
            ``auto_augment`` is ``'none'``.
        random_erasing: Probability of erasing one rectangle with normal noise.
        interpolation: ``'bilinear'`` or ``'bicubic'``.
    """

    auto_augment: str = "none"
    color_jitter: float = 0.0
    random_erasing: float = 0.0
    interpolation: str = "bilinear"

    def check(self) -> None:
        """Raises :class:`UsageError` naming the option that is out of range."""
        check_auto_augment(self.auto_augment)
        if self.interpolation not in INTERPOLATIONS:
            raise UsageError(
                f"Unknown --interpolation {self.interpolation!r}; choose one of "
                f"{', '.join(INTERPOLATIONS)}."
            )
        if self.color_jitter < 0:
            raise UsageError(f"--color-jitter must be >= 0, got {self.color_jitter}.")
        if not 0 <= self.random_erasing <= 1:
            raise UsageError(f"--random-erase must be in [0, 1], got {self.random_erasing}.")


# No auto-augment, jitter or erasing: crop + flip (the simple recipe's).
CROP_AND_FLIP = Augmentation()


def _policy(augmentation: Augmentation, interpolation: InterpolationMode) -> list:
    """The auto-augment stage, or colour jitter where there is none (timm's rule)."""
    name = augmentation.auto_augment
    if name.startswith("rand"):
        spec = RandAugmentSpec.parse(name)
        rand_augment = transforms.RandAugment(
            spec.num_ops, spec.magnitude, MAGNITUDE_BINS, interpolation, AUGMENT_FILL
        )
        return [rand_augment]
    if name != "none":
        return [transforms.AutoAugment(transforms.AutoAugmentPolicy(name))]
    if augmentation.color_jitter > 0:
        strength = augmentation.color_jitter
        return [transforms.ColorJitter(strength, strength, strength)]
    return []


def train_transform(
    crop_size: int, augmentation: Augmentation = CROP_AND_FLIP
) -> transforms.Compose:
    """RandomResizedCrop + flip, the auto-augment stage, normalize, random erasing.

    Raises:
        UsageError: An option of ``augmentation`` is out of range.
    """
    augmentation.check()
    interpolation = INTERPOLATIONS[augmentation.interpolation]
    steps: list = [
        transforms.RandomResizedCrop(crop_size, interpolation=interpolation, antialias=True),
        transforms.RandomHorizontalFlip(),
        *_policy(augmentation, interpolation),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]
    if augmentation.random_erasing > 0:
        steps.append(transforms.RandomErasing(augmentation.random_erasing, value="random"))
    return transforms.Compose(steps)


def val_transform(
    resize_size: int, crop_size: int, interpolation: str = "bilinear"
) -> transforms.Compose:
    """Resize the short side to ``resize_size``, centre crop ``crop_size``, normalize."""
    return transforms.Compose(
        [
            transforms.Resize(resize_size, INTERPOLATIONS[interpolation], antialias=True),
            transforms.CenterCrop(crop_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
