"""The papers' ImageNet recipes: presets, parameter groups, optimizer, LR schedule.

Three presets:

- ``simple`` (RepVGG paper Sec. 4.1, light and middle models): 120 epochs, SGD momentum 0.9,
  lr 0.1 per 256 images, cosine annealing, weight decay 1e-4 on conv and FC kernels only,
  RandomResizedCrop + flip.
- ``heavy`` (B3, and B2 in both settings): 200 epochs, 5-epoch linear warmup, cosine, label
  smoothing 0.1, mixup, AutoAugment (ImageNet policy) + crop + flip.
- ``qarepvgg``: the QARepVGG authors' recipe, each fact from their repository
  (cxxgtxy/QARepVGG):

  * ``train_QAV2_B0.sh``: 8 GPUs x ``--batch-size 128`` (global batch 1024), ``--tag qa``,
    ``--wd 4e-5``, ``--no-model-ema``.
  * ``main.py``: ``--lr`` 0.2 scaled by global batch / 512, i.e. 0.4 at 1024 = 0.1 per 256
    images; 120 epochs, no warmup; ``--smoothing 0``, ``--mixup 0``, ``--cutmix 0``. With
    ``--tag qa`` it builds timm's ``create_optimizer``, which leaves 1-D parameters (BN
    weights and biases, biases) undecayed; ``train.py: sgd_optimizer`` (the other branch)
    sets decay 0 for every key with ``bias`` or ``bn``: either way 4e-5 on conv and FC
    kernels only.
  * ``datasets.py: build_transform`` -> timm ``create_transform`` with ``main.py``'s
    defaults: RandomResizedCrop (``--train-interpolation bicubic``) + flip, RandAugment
    ``--aa rand-m9-mstd0.5-inc1``, ``--color-jitter 0.4`` (which timm applies only without
    an auto-augment policy, so not here), random erasing ``--reprob 0.25 --remode pixel``;
    evaluation resize 256 (bicubic) + centre crop 224.
  * ``B0_log.txt``: the epoch-mean LR starts at 0.39998 and ends at 2.4e-5 after 120
    epochs, a per-iteration cosine to 0 (as :func:`lr_factor`); 74.78 % top-1 for
    QARepVGG-B0, 15,808,616 parameters.

  The transforms are torchvision's (:mod:`repvgg_seg.pretrain.transforms`), which differ
  from timm's where docs/qarepvgg.md says.

The default preset of a model (:func:`default_recipe`) is its paper's: ``qarepvgg`` for
QARepVGG models, ``heavy`` for the B3 family, which the RepVGG paper trains only that way
(Table 5), ``simple`` for the others. The B2 family appears in both settings (Tables 4 and
5); it defaults to ``simple``.

The paper names mixup but not its alpha; ``heavy`` uses 0.2 (our choice, the common value for
ResNet-style ImageNet training). It gives no separate weight decay for ``heavy`` either, so both
recipes use 1e-4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UsageError
from ..models.arch import ModelName
from ..models.blocks import QARepVGGBlock

# The paper's learning rates are for a global batch of 256; other batches scale linearly.
REFERENCE_BATCH_SIZE = 256

# Kernels that the paper decays ("weight decay on conv and FC kernels only").
DECAYED_KERNEL_TYPES = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class Recipe:
    """One training preset; every field is overridable from the command line.

    Attributes:
        epochs: Total epochs.
        lr: Learning rate for a global batch of :data:`REFERENCE_BATCH_SIZE`.
        momentum: SGD momentum.
        weight_decay: Weight decay of conv and FC kernels.
        decay_norm_and_bias: Decay BN weights and biases and the FC bias too (plain SGD
            weight decay on every parameter); otherwise they are never decayed.
        label_smoothing: Cross-entropy label smoothing.
        mixup_alpha: Beta(alpha, alpha) of mixup; 0 disables it.
        auto_augment: torchvision AutoAugment policy (``'imagenet'``, ...), a RandAugment spec
            in timm's syntax (``'rand-m9-mstd0.5-inc1'``), or ``'none'``.
        lr_warmup_epochs: Epochs of linear LR warmup before the cosine.
        interpolation: ``'bilinear'`` or ``'bicubic'``, of RandomResizedCrop, RandAugment's
            geometric ops and the evaluation resize.
        color_jitter: Brightness, contrast and saturation jitter; as in timm, applied only
            when ``auto_augment`` is ``'none'``.
        random_erasing: Probability of erasing one random rectangle (per-pixel normal noise,
            timm's ``pixel`` mode) after normalization.
        lr_1x1_scale: LR multiplier of the bare 1x1 kernels of QARepVGG blocks (the 1x1 conv
            without a BN of its own); 1 trains them like every other parameter.
        global_batch_size: The global batch the preset was published with. Runs take their
            batch from ``--batch-size`` x processes and scale the LR linearly; this value is
            the one to aim for (e.g. ``-b 128`` on 8 GPUs for 1024).
    """

    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    label_smoothing: float
    mixup_alpha: float
    auto_augment: str
    lr_warmup_epochs: int
    decay_norm_and_bias: bool = False
    global_batch_size: int = REFERENCE_BATCH_SIZE
    interpolation: str = "bilinear"
    color_jitter: float = 0.0
    random_erasing: float = 0.0
    lr_1x1_scale: float = 1.0


RECIPES: dict[str, Recipe] = {
    "simple": Recipe(
        epochs=120,
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        label_smoothing=0.0,
        mixup_alpha=0.0,
        auto_augment="none",
        lr_warmup_epochs=0,
    ),
    "heavy": Recipe(
        epochs=200,
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        label_smoothing=0.1,
        mixup_alpha=0.2,
        auto_augment="imagenet",
        lr_warmup_epochs=5,
    ),
    # Each value's source file is in the module docstring.
    "qarepvgg": Recipe(
        epochs=120,
        lr=0.1,
        momentum=0.9,
        weight_decay=4e-5,
        label_smoothing=0.0,
        mixup_alpha=0.0,
        auto_augment="rand-m9-mstd0.5-inc1",
        lr_warmup_epochs=0,
        global_batch_size=1024,
        interpolation="bicubic",
        color_jitter=0.4,
        random_erasing=0.25,
    ),
}


# The variants that the paper trains only with the heavy recipe.
HEAVY_BY_DEFAULT = frozenset({"B3", "B3g2", "B3g4"})


def default_recipe(model: str) -> str:
    """The paper's preset for a model name (``'A0'``, ``'QARepVGG-B0'``, ...):
    ``'qarepvgg'``, ``'heavy'`` or ``'simple'``."""
    name = ModelName.parse(model)
    if name.block_type == "QARepVGG":
        return "qarepvgg"
    return "heavy" if name.arch in HEAVY_BY_DEFAULT else "simple"


def get_recipe(name: str) -> Recipe:
    """The preset called ``name``.

    Raises:
        UsageError: No such preset; the message lists the valid ones.
    """
    if name not in RECIPES:
        raise UsageError(f"Unknown recipe {name!r}; choose one of {', '.join(RECIPES)}.")
    return RECIPES[name]


def scaled_lr(lr_per_reference_batch: float, global_batch_size: int) -> float:
    """Linear scaling rule: the LR for ``global_batch_size`` images per step."""
    return lr_per_reference_batch * global_batch_size / REFERENCE_BATCH_SIZE


def _decayed_parameter_ids(model: nn.Module) -> set[int]:
    return {
        id(module.weight)
        for module in model.modules()
        if isinstance(module, DECAYED_KERNEL_TYPES) and module.weight is not None
    }


def bare_1x1_kernel_ids(model: nn.Module) -> set[int]:
    """The kernels of QARepVGG's 1x1 branches: convs without a BN of their own, whose
    gradient is not rescaled by one (``lr_1x1_scale`` slows them down)."""
    return {
        id(module.branch_1x1.weight)
        for module in model.modules()
        if isinstance(module, QARepVGGBlock) and hasattr(module, "branch_1x1")
    }


def named_parameter_groups(
    model: nn.Module, decay_norm_and_bias: bool = False
) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """Splits trainable parameters into ``(decayed, not_decayed)``.

    By the RepVGG paper's rule and the QARepVGG authors' (timm's ``create_optimizer``:
    1-D parameters undecayed), decayed: the kernels of ``Conv2d`` and ``Linear`` layers (a
    QARepVGG block's bare 1x1 conv included); not decayed: everything else, i.e. BN weights
    and biases and the FC bias. With ``decay_norm_and_bias`` every parameter is decayed
    (plain SGD weight decay; no preset uses it). Frozen parameters are left out.
    """
    decayed_ids = _decayed_parameter_ids(model)
    decayed, not_decayed = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            decay = decay_norm_and_bias or id(param) in decayed_ids
            (decayed if decay else not_decayed).append((name, param))
    return decayed, not_decayed


def build_optimizer(
    model: nn.Module,
    lr: float,
    momentum: float,
    weight_decay: float,
    decay_norm_and_bias: bool = False,
    lr_1x1_scale: float = 1.0,
) -> torch.optim.SGD:
    """SGD with parameter groups: decayed with ``weight_decay``, the rest with none.

    The first group is always the decayed one at ``lr`` (the LR that logs report). With
    ``lr_1x1_scale`` other than 1, QARepVGG's bare 1x1 kernels form a third group, decayed,
    at ``lr * lr_1x1_scale``; the LR schedule scales every group alike.

    Args:
        model: The classifier (unwrapped from DDP).
        lr: The actual (already scaled) learning rate.
        momentum: SGD momentum.
        weight_decay: Decay of conv and FC kernels.
        decay_norm_and_bias: Decay every other parameter too (see
            :func:`named_parameter_groups`).
        lr_1x1_scale: LR multiplier of QARepVGG's bare 1x1 kernels.

    Raises:
        UsageError: ``lr_1x1_scale`` is negative.
    """
    if lr_1x1_scale < 0:
        raise UsageError(f"--lr-1x1-scale must be >= 0, got {lr_1x1_scale}.")
    decayed, not_decayed = named_parameter_groups(model, decay_norm_and_bias)
    slow = bare_1x1_kernel_ids(model) if lr_1x1_scale != 1 else set()
    groups = [
        {"params": [p for _, p in decayed if id(p) not in slow], "weight_decay": weight_decay},
        {"params": [p for _, p in not_decayed], "weight_decay": 0.0},
    ]
    if slow:
        kernels = [p for _, p in decayed if id(p) in slow]
        groups.append({"params": kernels, "weight_decay": weight_decay, "lr": lr * lr_1x1_scale})
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the base LR at optimizer ``step``: linear warmup, then cosine to 0.

    The warmup reaches the full LR on its last step; the cosine then runs over the
    remaining steps, so the factor is 1 at its start and approaches 0 at the end.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int, warmup_epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration warmup + cosine annealing over ``epochs * steps_per_epoch`` steps.

    Stepped once per optimizer step (not per epoch), so the LR curve is smooth and a resumed
    run continues from the exact step it stopped at.
    """
    total_steps = epochs * steps_per_epoch
    warmup_steps = warmup_epochs * steps_per_epoch
    # A closure, not a lambda object with state: LambdaLR then saves only plain numbers,
    # which keeps the checkpoint loadable with weights_only=True.

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, warmup_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
