"""Whether a fused (re-parameterized) model computes what the unfused one does.

Fusion is exact in real arithmetic; in floating point the fused and the unfused model round
differently, so their logits differ by round-off and an argmax that sits on a near-tie can
flip. Every check in the project that compares the two (pretraining's end check,
``tools/deploy.py``, ``tools/test.py --fuse``, the demo) uses this one criterion:

1. Both models run in float32 with TF32 and autocast off (:func:`strict_float32`), whatever
   precision the caller trains or tests in: compared under fp16, bf16 or TF32 the check would
   measure that precision (differences of 1e-2 relative), not the fusion.
2. The tolerance is ``rtol x scale``, where ``scale`` is the largest ``|reference logit|`` of
   the batch and ``rtol`` is :data:`ROUNDOFF_RTOL`.
3. A changed argmax (an image's top-1 class, a pixel's class) counts as an error only where
   the reference's top-2 margin is larger than ``2 x tolerance``: two logits that are each
   off by at most the tolerance can move their gap by at most that much, so a closer tie
   may flip by round-off alone. Both counts are reported.
4. The fusion passes when the largest logit difference is within the tolerance and no
   argmax changed beyond the margin.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch

from .errors import CheckFailedError

# float32 has a unit round-off of 6e-8. Measured here, the fused and unfused logits of whole
# PSPNets (up to 2048x1024 inputs) differ by under 1e-6 of the largest logit with direct
# convs and under 2e-5 with the CPU Winograd path; a broken fusion (a lost branch, a wrong BN
# eps or padding) moves them by 1e-3 to 1. 1e-4 sits between both with room on each side.
ROUNDOFF_RTOL = 1e-4


class FusionMismatchError(CheckFailedError):
    """A fused model does not reproduce the unfused one beyond float32 round-off."""


@dataclass(frozen=True)
class Agreement:
    """How far a candidate's logits are from a reference's, and which argmaxes changed.

    Attributes:
        max_abs_diff: Largest ``|candidate - reference|`` logit difference.
        max_abs_reference: Largest ``|reference logit|`` (the scale of the round-off).
        max_relative_diff: Largest per-batch ``max_abs_diff / max_abs_reference``.
        changed: Argmaxes (images or pixels) that differ.
        changed_beyond_margin: Those among them whose reference top-2 margin exceeds twice
            the tolerance: errors, not round-off.
        num_compared: Argmaxes compared (images or pixels).
        rtol: The relative tolerance the counts were made with.
    """

    max_abs_diff: float
    max_abs_reference: float
    max_relative_diff: float
    changed: int
    changed_beyond_margin: int
    num_compared: int
    rtol: float = ROUNDOFF_RTOL

    @property
    def near_tie_changes(self) -> int:
        """Changed argmaxes on near-ties (round-off, not an error)."""
        return self.changed - self.changed_beyond_margin

    @property
    def ok(self) -> bool:
        """Logits within the tolerance and no argmax changed beyond the margin."""
        return self.max_relative_diff <= self.rtol and self.changed_beyond_margin == 0

    def merge(self, other: Agreement) -> Agreement:
        """The agreement over both sets of inputs (e.g. two batches)."""
        return replace(
            self,
            max_abs_diff=max(self.max_abs_diff, other.max_abs_diff),
            max_abs_reference=max(self.max_abs_reference, other.max_abs_reference),
            max_relative_diff=max(self.max_relative_diff, other.max_relative_diff),
            changed=self.changed + other.changed,
            changed_beyond_margin=self.changed_beyond_margin + other.changed_beyond_margin,
            num_compared=self.num_compared + other.num_compared,
        )

    def describe(self, unit: str = "pixels") -> str:
        """One line: logit difference against the tolerance and both change counts."""
        return (
            f"max |logit diff| {self.max_abs_diff:.3g} on max |logit| "
            f"{self.max_abs_reference:.3g} (relative {self.max_relative_diff:.2g}, tolerance "
            f"{self.rtol:.0e}); changed {unit} {self.changed}/{self.num_compared}, of which "
            f"{self.changed_beyond_margin} beyond the round-off margin and "
            f"{self.near_tie_changes} on near-ties"
        )

    def check(self, what: str, unit: str = "pixels") -> None:
        """Raises :class:`FusionMismatchError` unless :attr:`ok`.

        Args:
            what: Names the two models compared, e.g. ``"fused vs unfused classifier"``.
            unit: What an argmax decides (``"pixels"``, ``"images"``).
        """
        if not self.ok:
            raise FusionMismatchError(
                f"{what}: {self.describe(unit)}. The fused model does not compute what the "
                "unfused one does (beyond float32 round-off): the re-parameterization is "
                "broken; please report this with the config and checkpoint."
            )


def compare_logits(
    reference: torch.Tensor,
    candidate: torch.Tensor,
    class_dim: int = 1,
    rtol: float = ROUNDOFF_RTOL,
) -> Agreement:
    """Compares two logit tensors (``N,C`` or ``N,C,H,W``) by the criterion above.

    Both are compared in float32 whatever their dtype; ``class_dim`` holds the classes.
    """
    if reference.shape != candidate.shape:
        raise ValueError(
            f"logit shapes differ: {tuple(reference.shape)} vs {tuple(candidate.shape)}"
        )
    reference, candidate = reference.float(), candidate.float()
    scale = reference.abs().max().item() if reference.numel() else 0.0
    max_diff = (reference - candidate).abs().max().item() if reference.numel() else 0.0
    tolerance = rtol * scale
    changed = reference.argmax(class_dim) != candidate.argmax(class_dim)
    if reference.shape[class_dim] >= 2:
        top2 = reference.topk(2, dim=class_dim).values
        first, second = top2.unbind(class_dim)
        beyond_margin = changed & (first - second > 2 * tolerance)
    else:
        beyond_margin = changed
    return Agreement(
        max_abs_diff=max_diff,
        max_abs_reference=scale,
        max_relative_diff=max_diff / scale if scale > 0 else (0.0 if max_diff == 0 else 1.0),
        changed=int(changed.sum().item()),
        changed_beyond_margin=int(beyond_margin.sum().item()),
        num_compared=changed.numel(),
        rtol=rtol,
    )


@contextlib.contextmanager
def strict_float32() -> Iterator[None]:
    """Runs the block in true float32: TF32 off (CUDA matmul and cuDNN), matmul precision
    'highest', CPU and CUDA autocast off. The caller's settings are restored afterwards.
    """
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.autocast("cpu", enabled=False))
            if torch.cuda.is_available():
                stack.enter_context(torch.autocast("cuda", enabled=False))
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved[0]
        torch.backends.cudnn.allow_tf32 = saved[1]
        torch.set_float32_matmul_precision(saved[2])
