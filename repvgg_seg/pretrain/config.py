"""The options of a pretraining run, with the recipe filling whatever is left unset."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..models.arch import ModelName
from .recipe import default_recipe, get_recipe
from .transforms import Augmentation


@dataclass(frozen=True)
class PretrainConfig:
    """Everything a run needs; names follow torchvision's classification reference script.

    Fields left ``None`` take the value of ``recipe`` (see :mod:`repvgg_seg.pretrain.recipe`);
    call :meth:`resolved` to fill them in and validate.

    Attributes:
        data_path: ImageFolder root with ``train/`` and ``val/``.
        model: Variant, optionally with its block type (``'A0'``, ``'RepVGG-B2'``,
            ``'QARepVGG-A0'``); :meth:`resolved` makes it canonical (``'A0'``,
            ``'QARepVGG-A0'``).
        recipe: ``'simple'``, ``'heavy'`` or ``'qarepvgg'``; None takes the paper's preset
            for ``model`` (:func:`~repvgg_seg.pretrain.recipe.default_recipe`: qarepvgg for
            QARepVGG models, heavy for B3, B3g2 and B3g4, simple otherwise).
        batch_size: Images per process per step (the global batch is this x processes).
        epochs: Total epochs.
        workers: DataLoader workers per process.
        lr: Learning rate per 256 images; the run uses ``lr * global_batch / 256``.
        momentum: SGD momentum.
        wd: Weight decay of conv and FC kernels.
        decay_norm_and_bias: Apply ``wd`` to BN parameters and the FC bias too (plain SGD
            weight decay, the QARepVGG recipe's).
        label_smoothing: Cross-entropy label smoothing.
        mixup_alpha: Mixup alpha; 0 disables mixup.
        auto_augment: AutoAugment policy, RandAugment spec (``'rand-m9-mstd0.5-inc1'``) or
            ``'none'``.
        lr_warmup_epochs: Epochs of linear warmup.
        interpolation: ``'bilinear'`` or ``'bicubic'`` (crop, RandAugment, eval resize).
        color_jitter: Colour jitter strength (only without an auto-augment policy).
        random_erasing: Random erasing probability.
        lr_1x1_scale: LR multiplier of QARepVGG's bare 1x1 kernels.
        amp: Mixed precision (float16 + grad scaler on CUDA, bfloat16 on CPU).
        model_ema: Keep an exponential moving average of the weights and evaluate it too.
        model_ema_steps: Update the EMA every this many steps.
        model_ema_decay: EMA decay per step.
        resume: Training checkpoint to continue from (or to evaluate with ``test_only``).
        test_only: Only evaluate the ``resume`` checkpoint on ``val/``.
        output_dir: Where checkpoints and ``metrics.jsonl`` go; None writes nothing.
        train_crop_size: RandomResizedCrop size.
        val_resize_size: Short side before the centre crop at evaluation.
        val_crop_size: Centre crop at evaluation.
        seed: Seeds model init, data order and augmentation.
        print_freq: Log every this many iterations.
        device: ``'cuda'`` or ``'cpu'``; None picks CUDA when available.
        stop_after_epoch: Stop after this many epochs as if interrupted (the schedule still
            spans ``epochs``); continue later with ``resume``.
    """

    data_path: str
    model: str = "A0"
    recipe: str | None = None
    batch_size: int = 32
    epochs: int | None = None
    workers: int = 8
    lr: float | None = None
    momentum: float | None = None
    wd: float | None = None
    decay_norm_and_bias: bool | None = None
    label_smoothing: float | None = None
    mixup_alpha: float | None = None
    auto_augment: str | None = None
    lr_warmup_epochs: int | None = None
    interpolation: str | None = None
    color_jitter: float | None = None
    random_erasing: float | None = None
    lr_1x1_scale: float | None = None
    amp: bool = False
    model_ema: bool = False
    model_ema_steps: int = 32
    model_ema_decay: float = 0.9999
    resume: str | None = None
    test_only: bool = False
    output_dir: str | None = None
    train_crop_size: int = 224
    val_resize_size: int = 256
    val_crop_size: int = 224
    seed: int = 0
    print_freq: int = 10
    device: str | None = None
    stop_after_epoch: int | None = None

    def resolved(self) -> PretrainConfig:
        """A copy with the recipe chosen, its values filled in and the model name canonical.

        Raises:
            UsageError: An unknown model, recipe or policy, or an out-of-range value; the
                message names the option.
        """
        model = ModelName.parse(self.model).canonical
        recipe_name = self.recipe if self.recipe is not None else default_recipe(model)
        recipe = get_recipe(recipe_name)
        from_recipe = {
            "epochs": recipe.epochs,
            "lr": recipe.lr,
            "momentum": recipe.momentum,
            "wd": recipe.weight_decay,
            "decay_norm_and_bias": recipe.decay_norm_and_bias,
            "label_smoothing": recipe.label_smoothing,
            "mixup_alpha": recipe.mixup_alpha,
            "auto_augment": recipe.auto_augment,
            "lr_warmup_epochs": recipe.lr_warmup_epochs,
            "interpolation": recipe.interpolation,
            "color_jitter": recipe.color_jitter,
            "random_erasing": recipe.random_erasing,
            "lr_1x1_scale": recipe.lr_1x1_scale,
        }
        filled = {k: v for k, v in from_recipe.items() if getattr(self, k) is None}
        config = dataclasses.replace(self, model=model, recipe=recipe_name, **filled)
        config._validate()
        return config

    def _validate(self) -> None:
        positive = ("batch_size", "epochs", "model_ema_steps", "print_freq")
        positive += ("train_crop_size", "val_resize_size", "val_crop_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise UsageError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}."
                )
        for name in ("lr", "wd", "mixup_alpha", "lr_warmup_epochs", "workers", "lr_1x1_scale"):
            if getattr(self, name) < 0:
                raise UsageError(
                    f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}."
                )
        if not 0 <= self.label_smoothing < 1:
            raise UsageError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}.")
        if not 0 < self.model_ema_decay < 1:
            raise UsageError(f"--model-ema-decay must be in (0, 1), got {self.model_ema_decay}.")
        if self.lr_warmup_epochs >= self.epochs:
            raise UsageError(
                f"--lr-warmup-epochs ({self.lr_warmup_epochs}) must be smaller than --epochs "
                f"({self.epochs})."
            )
        self.augmentation.check()
        if self.stop_after_epoch is not None and not 1 <= self.stop_after_epoch <= self.epochs:
            raise UsageError(
                f"--stop-after-epoch must be in [1, --epochs={self.epochs}], got "
                f"{self.stop_after_epoch}."
            )
        if self.test_only and not self.resume:
            raise UsageError("--test-only needs --resume CHECKPOINT: the weights to evaluate.")

    @property
    def augmentation(self) -> Augmentation:
        """The training transform's choices (of a :meth:`resolved` config)."""
        return Augmentation(
            auto_augment=self.auto_augment,
            color_jitter=self.color_jitter,
            random_erasing=self.random_erasing,
            interpolation=self.interpolation,
        )

    @property
    def model_label(self) -> str:
        """``'RepVGG-A0'`` or ``'QARepVGG-A0'``, for messages."""
        return str(ModelName.parse(self.model))

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-like dict (stored as a checkpoint's ``args``)."""
        return dataclasses.asdict(self)
