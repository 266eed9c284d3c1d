"""What the post-training pipeline (:mod:`.pipeline`) and the QAT one (:mod:`.qat`) run
alike before they quantize: the checked deploy, the ``--keep-float-layers`` check, and the
wall time (and progress bars) of their steps."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import nn

from ..deploy import compare_on_batch, deploy_segmentor
from ..errors import UsageError

# A progress factory: (what, total steps) -> a function called once per step.
ProgressFactory = Callable[[str, int], Callable[[], None]]


class Steps:
    """The wall time of each step, and the progress callbacks of the long ones."""

    def __init__(self, progress: ProgressFactory | None) -> None:
        self.progress = progress
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def done(self, step: str) -> None:
        now = time.perf_counter()
        self.seconds[step] = now - self._last
        self._last = now

    def bar(self, what: str, total: int) -> Callable[[], None] | None:
        return self.progress(what, total) if self.progress is not None else None


def deploy_checked(model: torch.nn.Module, batch: dict) -> torch.nn.Module:
    """The deployed form of ``model`` (fused, conv+BN folded), checked on one val image."""
    deployed = copy.deepcopy(model)
    deploy_segmentor(deployed, torch.randn(1, 3, 64, 64))
    compare_on_batch(model, deployed, batch).check(
        "deployed vs loaded segmentor on the first val image"
    )
    return deployed.float()


def check_layer_names(requested: tuple[str, ...], model: torch.nn.Module) -> None:
    """Refuses names that are not convs of the deployed model (the ONNX Conv nodes carry
    their modules' names)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    unknown = [name for name in requested if name not in names]
    if unknown:
        raise UsageError(
            f"--keep-float-layers {' '.join(unknown)}: no such conv in the deployed model; "
            f"its convs are {', '.join(names[:3])}, ..., {names[-1]} ({len(names)}; "
            "--sensitivity lists them all)."
        )
