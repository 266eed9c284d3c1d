"""The mmengine runner of a quantization-aware fine-tuning: the model it trains
(:class:`QATSegmentor`), the config's data, optimizer and runtime settings, a poly schedule
over the QAT iterations, and atomic checkpoints."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.model import BaseModel, is_model_wrapper
from mmengine.runner.checkpoint import _load_checkpoint_to_model
from torch import nn

from ..checkpoint import CheckpointError, describe_key_mismatch, read_checkpoint
from ..errors import UsageError
from ..loader import check_finite_weights, segmentor_state
from ..runner import AtomicCheckpointRunner, configure_for_cpu
from .qat_model import ActivationScales, FakeQuantConv2d


@dataclass(frozen=True)
class QATSchedule:
    """How the fake-quantized segmentor is fine-tuned (``tools/qat.py``'s training flags).

    The defaults are measured on the demo's PSPNet-A0 (docs/quantization.md).

    Attributes:
        iterations: Training iterations (batches of the config's train dataloader).
        lr: Starting learning rate of the config's optimizer; poly decay (power 0.9) to 0.
        label_weight: Weight of the config's loss on the ground-truth labels.
        distill_weight: Weight of the KL divergence from the float model's predictions.
        checkpoint_interval: Iterations between checkpoints (``--resume`` continues there).
        log_interval: Iterations between log lines (loss, LR, ETA).
        amp: mmengine's AmpOptimWrapper (needs a GPU).
        learn_scales: Train the activation scales too (LSQ; exported as the QDQ model's).
    """

    iterations: int = 200
    lr: float = 1e-3
    label_weight: float = 0.0
    distill_weight: float = 1.0
    checkpoint_interval: int = 50
    log_interval: int = 10
    amp: bool = False
    learn_scales: bool = False

    def __post_init__(self) -> None:
        for flag, value in (
            ("--iters", self.iterations),
            ("--checkpoint-interval", self.checkpoint_interval),
            ("--log-interval", self.log_interval),
        ):
            if value < 1:
                raise UsageError(f"{flag} must be at least 1, got {value}.")
        if not self.lr > 0:
            raise UsageError(f"--lr must be positive, got {self.lr}.")
        if self.label_weight < 0 or self.distill_weight < 0:
            raise UsageError("--label-weight and --distill-weight must be 0 or more.")
        if self.label_weight == 0 and self.distill_weight == 0:
            raise UsageError("--label-weight and --distill-weight are both 0: nothing to train.")


def qat_config(cfg: Config, work_dir: str | os.PathLike, schedule: QATSchedule) -> Config:
    """The config of the fine-tuning run (written to its work dir): the training config with
    the QAT schedule, optimizer LR and hooks, adapted to a machine without GPUs.

    Raises:
        UsageError: ``amp`` without a GPU.
    """
    cfg = copy.deepcopy(cfg)
    cfg.work_dir = os.fspath(work_dir)
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=schedule.iterations)
    for key in ("val_dataloader", "val_cfg", "val_evaluator", "test_dataloader", "test_cfg"):
        cfg.pop(key, None)  # the INT8 model is measured after export, by the pipeline
    cfg.optim_wrapper.optimizer.lr = schedule.lr
    if schedule.learn_scales:  # weight decay would shrink the scales
        paramwise = cfg.optim_wrapper.setdefault("paramwise_cfg", {})
        paramwise.setdefault("custom_keys", {})["activation_scales"] = dict(decay_mult=0.0)
    if schedule.amp:
        if not torch.cuda.is_available():
            raise UsageError("--amp needs a CUDA GPU (mmengine's AmpOptimWrapper); none found.")
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    cfg.param_scheduler = [
        dict(
            type="PolyLR",
            eta_min=0.0,
            power=0.9,
            begin=0,
            end=schedule.iterations,
            by_epoch=False,
        )
    ]
    cfg.default_hooks = dict(
        timer=dict(type="IterTimerHook"),
        logger=dict(type="LoggerHook", interval=schedule.log_interval, log_metric_by_epoch=False),
        param_scheduler=dict(type="ParamSchedulerHook"),
        checkpoint=dict(
            type="CheckpointHook",
            by_epoch=False,
            interval=schedule.checkpoint_interval,
            max_keep_ckpts=2,
        ),
        sampler_seed=dict(type="DistSamplerSeedHook"),
    )
    cfg.log_processor = dict(by_epoch=False)
    cfg.load_from = None
    cfg.qat = dict(
        iterations=schedule.iterations,
        lr=schedule.lr,
        label_weight=schedule.label_weight,
        distill_weight=schedule.distill_weight,
        learn_scales=schedule.learn_scales,
    )
    configure_for_cpu(cfg)
    return cfg


class QATSegmentor(BaseModel):
    """What the runner trains: a fake-quantized segmentor, and its float teacher.

    Only the fake-quantized convs' weights and biases train, and the activation scales if
    learned (the exported graph holds no other parameter). The loss is the config's
    decode-head loss times ``label_weight`` plus ``distill_weight`` times the KL divergence
    from the float model's per-pixel class distribution (at the head's resolution), which
    keeps the INT8 predictions on the float model's.

    Args:
        student: The deployed segmentor after :func:`insert_fake_quant`.
        teacher: The deployed float segmentor (frozen; needed when ``distill_weight > 0``).
        label_weight: Weight of the config's loss on the ground truth.
        distill_weight: Weight of the distillation loss.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        label_weight: float = 1.0,
        distill_weight: float = 0.0,
    ) -> None:
        super().__init__(data_preprocessor=student.data_preprocessor)
        self.student = student
        self.teacher = teacher if distill_weight > 0 else None
        self.label_weight, self.distill_weight = label_weight, distill_weight
        trained = {
            id(p)
            for m in student.modules()
            if isinstance(m, FakeQuantConv2d | ActivationScales)
            for p in m.parameters()
        }
        for parameter in student.parameters():
            parameter.requires_grad_(id(parameter) in trained)
        if self.teacher is not None:
            self.teacher.requires_grad_(False)

    def init_weights(self) -> None:
        """Nothing: the weights are the checkpoint's (mmengine's runner calls this before
        training, and the default would re-initialize them)."""

    def train(self, mode: bool = True) -> QATSegmentor:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # its dropout off: a fixed target
        for module in self.student.modules():
            # A BN that was not folded keeps its statistics; dropout would only add noise
            # to a fine-tuning whose target is the float model's function.
            if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.Dropout2d | nn.Dropout):
                module.eval()
        return self

    def forward(self, inputs: torch.Tensor, data_samples=None, mode: str = "tensor"):
        if mode != "loss":
            return self.student(inputs, data_samples, mode)
        logits = self.student.decode_head.forward(self.student.extract_feat(inputs))
        losses = {}
        if self.label_weight > 0:
            for key, value in self.student.decode_head.loss_by_feat(logits, data_samples).items():
                losses[key] = value * self.label_weight if "loss" in key else value
        if self.teacher is not None:
            with torch.no_grad():
                target = self.teacher.decode_head.forward(self.teacher.extract_feat(inputs))
            divergence = F.kl_div(
                F.log_softmax(logits.float(), 1),
                F.log_softmax(target.float(), 1),
                reduction="none",
                log_target=True,
            )
            losses["loss_distill"] = self.distill_weight * divergence.sum(1).mean()
        return losses


class QATRunner(AtomicCheckpointRunner):
    """The atomic-checkpoint runner; ``--resume`` loads a QAT checkpoint strictly.

    The training runner's resume check expects the config's training model; a QAT work
    dir holds :class:`~.qat_model.QATSegmentor` states (fused convs, quantizer buffers).
    """

    def load_checkpoint(self, filename: str, map_location="cpu", strict=False, revise_keys=()):
        """Reads ``filename`` by the package's reader and loads it strictly.

        Raises:
            CheckpointError: The file cannot be read, holds NaN/Inf weights, or is not a
                tools/qat.py checkpoint of this model and settings.
        """
        contents = read_checkpoint(filename)
        state = segmentor_state(contents, filename)
        check_finite_weights(state, filename)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        mismatch = describe_key_mismatch(model.state_dict(), state)
        if mismatch is not None:
            raise CheckpointError(
                f"--resume: checkpoint {filename!r} is not a tools/qat.py checkpoint of this "
                f"model ({mismatch}); pass another --work-dir or start over with "
                "--overwrite-work-dir."
            )
        self.call_hook("after_load_checkpoint", checkpoint=contents)
        # The training runner's loading call (strict here; DDP prefixes removed).
        _load_checkpoint_to_model(model, contents, strict=True, revise_keys=[(r"^module\.", "")])
        self._has_loaded = True
        self.logger.info(f"Load checkpoint from {filename}")
        return contents


def build_qat_runner(
    cfg: Config, model: QATSegmentor, launcher: str, resume: bool
) -> AtomicCheckpointRunner:
    """The runner that fine-tunes ``model`` as :func:`qat_config`'s ``cfg`` says."""
    return QATRunner(
        model=model,
        work_dir=cfg.work_dir,
        train_dataloader=cfg.train_dataloader,
        optim_wrapper=cfg.optim_wrapper,
        param_scheduler=cfg.param_scheduler,
        train_cfg=cfg.train_cfg,
        default_hooks=cfg.default_hooks,
        launcher=launcher,
        env_cfg=cfg.get("env_cfg", dict(dist_cfg=dict(backend="gloo"))),
        log_processor=cfg.log_processor,
        log_level=cfg.get("log_level", "INFO"),
        randomness=cfg.get("randomness", dict(seed=0)),
        default_scope=cfg.get("default_scope", "mmseg"),
        resume=resume,
        load_from=None,
        cfg=cfg,
    )
