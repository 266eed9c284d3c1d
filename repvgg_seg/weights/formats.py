"""RepVGG checkpoint formats, detected from their keys and renamed to this package's keys.

- qarepvgg (QARepVGG's authors, ``QARepVGGBlockV2``; ``stage0.rbr_1x1.weight``,
  ``stage0.bn...``): the official layout with the 1x1 a bare conv ``rbr_1x1`` and one
  ``bn`` after the sum (no identity parameters). Their fused blocks (``rbr_reparam``) are the
  official format's.
- official (``stage0.rbr_dense...``): stem ``stage0``, stage i (0-based) block j
  ``stage{i+1}.j``, branches ``rbr_dense.{conv,bn}``, ``rbr_1x1.{conv,bn}``,
  ``rbr_identity``, fused ``rbr_reparam``, head ``linear``.
- mmpretrain (``backbone.stem.branch_3x3.norm...``): ``backbone.stem``,
  ``backbone.stage_{i+1}.j``, ``branch_3x3.{conv,norm}``, ``branch_1x1.{conv,norm}``,
  ``branch_norm``, fused ``branch_reparam``, head ``head.fc``.
- timm (``stem.conv_kxk...``): ``stem``, ``stages.i.j``, ``conv_kxk.{conv,bn}``,
  ``conv_1x1.{conv,bn}``, ``identity``, fused ``reparam_conv``, head ``head.fc``.
- repvgg_seg (ours, ``[backbone.]stem.branch_3x3.bn...``): ``stem``, ``stages.i.j``,
  ``branch_3x3.{conv,bn}``, ``branch_1x1.{conv,bn}``, ``branch_identity``, fused
  ``fused_conv``; QARepVGG blocks ``branch_1x1`` (a bare conv) and ``bn``; our classifier's
  head ``fc``.

Any of them may carry DDP's ``module.`` prefix and sit under ``state_dict`` (mmengine,
mmseg, mmpretrain) or ``model`` (our pretraining). Keys outside ``backbone.`` (heads, an
mmseg segmentor's decode heads) and each format's classification head are dropped; any
other key that is not a RepVGG layer is an error, so no weight is silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from ..checkpoint import (
    FUSED_CONV,
    TRAINING_BRANCH,
    CheckpointError,
    is_deployed_state_dict,
    state_dict_of,
)
from ..errors import preview_keys
from ..models.arch import ARCHS, RepVGGArch

# The module name of a QARepVGG block's BN after the sum (models.blocks.QARepVGGBlock.bn);
# only QARepVGG blocks have a norm layer directly under the block.
QAREPVGG_NORM = "bn"


@dataclass(frozen=True)
class CheckpointFormat:
    """The key layout of one RepVGG implementation.

    Attributes:
        name: Format name used in messages.
        stem: Module name of the stem block.
        stage_pattern: Matches ``<stage>.<block>.`` at the start of a key; group 1 is the
            stage number, group 2 the block index.
        first_stage_number: The number the format gives to our ``stages.0``.
        branches: ``(their module prefix, ours)`` inside a block.
        head_prefixes: Classification-head keys, dropped.
        signatures: Stem key prefixes that identify this format. :func:`detect_format`
            tries :data:`FORMATS` in order, so a format whose keys also carry a later
            format's signature comes first.
    """

    name: str
    stem: str
    stage_pattern: re.Pattern
    first_stage_number: int
    branches: tuple[tuple[str, str], ...]
    head_prefixes: tuple[str, ...]
    signatures: tuple[str, ...]

    def to_ours(self, key: str) -> str | None:
        """Our key for one of this format's backbone keys, or None if it is not one."""
        if key.startswith(self.stem + "."):
            block, rest = "stem.", key[len(self.stem) + 1 :]
        else:
            match = self.stage_pattern.match(key)
            if match is None:
                return None
            stage = int(match[1]) - self.first_stage_number
            block, rest = f"stages.{stage}.{int(match[2])}.", key[match.end() :]
        for theirs, ours in self.branches:
            if rest.startswith(theirs):
                return block + ours + rest[len(theirs) :]
        return None


def _branches(three: str, one: str, norm: str, identity: str, fused: str) -> tuple:
    return (
        (f"{three}.conv.", f"{TRAINING_BRANCH}.conv."),
        (f"{three}.{norm}.", f"{TRAINING_BRANCH}.bn."),
        (f"{one}.conv.", "branch_1x1.conv."),
        (f"{one}.{norm}.", "branch_1x1.bn."),
        (f"{identity}.", "branch_identity."),
        (f"{fused}.", f"{FUSED_CONV}."),
    )


FORMATS: tuple[CheckpointFormat, ...] = (
    # Before "official": its stem keys start with "stage0.rbr_" too.
    CheckpointFormat(
        name="qarepvgg",
        stem="stage0",
        stage_pattern=re.compile(r"stage(\d+)\.(\d+)\."),
        first_stage_number=1,
        branches=(
            ("rbr_dense.conv.", f"{TRAINING_BRANCH}.conv."),
            ("rbr_dense.bn.", f"{TRAINING_BRANCH}.bn."),
            ("rbr_1x1.", "branch_1x1."),
            ("bn.", f"{QAREPVGG_NORM}."),
            ("rbr_reparam.", f"{FUSED_CONV}."),
        ),
        head_prefixes=("linear.",),
        signatures=("stage0.rbr_1x1.weight", "stage0.bn."),
    ),
    CheckpointFormat(
        name="official",
        stem="stage0",
        stage_pattern=re.compile(r"stage(\d+)\.(\d+)\."),
        first_stage_number=1,
        branches=_branches("rbr_dense", "rbr_1x1", "bn", "rbr_identity", "rbr_reparam"),
        head_prefixes=("linear.",),
        signatures=("stage0.rbr_",),
    ),
    CheckpointFormat(
        name="mmpretrain",
        stem="stem",
        stage_pattern=re.compile(r"stage_(\d+)\.(\d+)\."),
        first_stage_number=1,
        branches=_branches("branch_3x3", "branch_1x1", "norm", "branch_norm", "branch_reparam"),
        head_prefixes=("head.",),
        signatures=("stem.branch_3x3.norm.", "stem.branch_reparam."),
    ),
    CheckpointFormat(
        name="timm",
        stem="stem",
        stage_pattern=re.compile(r"stages\.(\d+)\.(\d+)\."),
        first_stage_number=0,
        branches=_branches("conv_kxk", "conv_1x1", "bn", "identity", "reparam_conv"),
        head_prefixes=("head.", "final_conv."),
        signatures=("stem.conv_kxk.", "stem.reparam_conv."),
    ),
    CheckpointFormat(
        name="repvgg_seg",
        stem="stem",
        stage_pattern=re.compile(r"stages\.(\d+)\.(\d+)\."),
        first_stage_number=0,
        branches=(
            *_branches(TRAINING_BRANCH, "branch_1x1", "bn", "branch_identity", FUSED_CONV),
            # A QARepVGG block's bare 1x1 conv and its BN after the sum.
            ("branch_1x1.", "branch_1x1."),
            (f"{QAREPVGG_NORM}.", f"{QAREPVGG_NORM}."),
        ),
        head_prefixes=("fc.", "head."),
        signatures=(f"stem.{TRAINING_BRANCH}.bn.", f"stem.{FUSED_CONV}."),
    ),
)


@dataclass(frozen=True)
class ConvertedCheckpoint:
    """A checkpoint's backbone weights under our keys.

    Attributes:
        state_dict: Backbone state dict with our keys (no ``backbone.`` prefix).
        format: Name of the detected :class:`CheckpointFormat`.
        deployed: The weights are fused (``fused_conv``) rather than three branches.
        dropped: Keys left out: classification heads and keys outside the backbone.
    """

    state_dict: dict[str, torch.Tensor]
    format: str
    deployed: bool
    dropped: tuple[str, ...]


@dataclass(frozen=True)
class Structure:
    """The shape of a RepVGG network, as far as its weights tell it."""

    in_channels: int
    num_blocks: tuple[int, ...]
    channels: tuple[int, ...]
    groups: int

    @classmethod
    def of_arch(cls, arch: RepVGGArch, in_channels: int = 3) -> Structure:
        return cls(in_channels, tuple(arch.num_blocks), tuple(arch.channels), arch.groups)

    @property
    def arch_name(self) -> str | None:
        """The :data:`ARCHS` variant with these layers, if any (input channels aside)."""
        for name, arch in ARCHS.items():
            if Structure.of_arch(arch, self.in_channels) == self:
                return name
        return None

    def describe(self) -> str:
        name = self.arch_name
        text = (
            f"RepVGG-{name}"
            if name
            else f"an unlisted RepVGG (blocks {self.num_blocks}, channels {self.channels}, "
            f"groups {self.groups})"
        )
        return text if self.in_channels == 3 else f"{text} with {self.in_channels} input channels"


def detect_format(keys: Iterable[str]) -> CheckpointFormat | None:
    """The format whose stem signature appears among ``keys`` (already without prefixes)."""
    keys = list(keys)
    for fmt in FORMATS:
        if any(key.startswith(fmt.signatures) for key in keys):
            return fmt
    return None


def convert_state_dict(
    checkpoint: object, source: str, prefix: str | None = None
) -> ConvertedCheckpoint:
    """Renames any RepVGG checkpoint's backbone weights to our keys.

    Args:
        checkpoint: What ``torch.load`` returned.
        source: The checkpoint's name for messages (path, URL or ``repvgg:NAME``).
        prefix: Take only keys under this prefix (e.g. ``'backbone.'``); None takes
            ``backbone.*`` when the checkpoint has such keys (mmpretrain, our classifier,
            mmseg segmentors), else every key.

    Raises:
        CheckpointError: No backbone weights in a known format (e.g. a head only), keys
            that are neither backbone nor head, or fused and unfused blocks mixed.
    """
    state = {
        key.removeprefix("module."): value
        for key, value in state_dict_of(checkpoint, source).items()
    }
    if prefix is None:
        prefix = "backbone." if any(key.startswith("backbone.") for key in state) else ""
    body = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    outside = [key for key in state if not key.startswith(prefix)]
    fmt = detect_format(body)
    if fmt is None:
        known = "; ".join(f"{f.name}: '{f.signatures[0]}...'" for f in FORMATS)
        raise CheckpointError(
            f"Checkpoint {source} has no RepVGG backbone weights in a known format: none of "
            f"its {len(state)} keys ({preview_keys(state)}) is a RepVGG stem key ({known}; "
            "mmpretrain and repvgg_seg under 'backbone.'). A classification head alone "
            "cannot initialize the backbone."
        )
    renamed: dict[str, torch.Tensor] = {}
    dropped, unexpected = list(outside), []
    for key, value in body.items():
        ours = fmt.to_ours(key)
        if ours is not None:
            renamed[ours] = value
        elif key.startswith(fmt.head_prefixes):
            dropped.append(prefix + key)
        else:
            unexpected.append(prefix + key)
    if unexpected:
        raise CheckpointError(
            f"Checkpoint {source} ({fmt.name} format) has keys that are not RepVGG layers: "
            f"{preview_keys(unexpected)}. It may be a different model (e.g. RepVGG with SE "
            "blocks, RepVGGplus); this backbone loads plain RepVGG only."
        )
    deployed = is_deployed_state_dict(renamed, f"Checkpoint {source}") is True
    return ConvertedCheckpoint(renamed, fmt.name, deployed, tuple(dropped))


def infer_block_type(state: Mapping[str, torch.Tensor], deployed: bool) -> str | None:
    """``'QARepVGG'`` or ``'RepVGG'`` for training-time weights (our keys); None for fused
    ones, which are the same network for both, or when there is no stem."""
    if deployed or not any(key.startswith("stem.") for key in state):
        return None
    qarepvgg = any(key.startswith(f"stem.{QAREPVGG_NORM}.") for key in state)
    return "QARepVGG" if qarepvgg else "RepVGG"


def infer_structure(state: Mapping[str, torch.Tensor], deployed: bool) -> Structure | None:
    """Reads depths, channels and groups off the conv weight shapes (our keys).

    Returns None when there is no stem conv to start from.
    """
    conv = f"{FUSED_CONV}.weight" if deployed else f"{TRAINING_BRANCH}.conv.weight"
    stem = state.get(f"stem.{conv}")
    if stem is None or stem.dim() != 4:
        return None
    weights, num_blocks, channels = [stem], [], [stem.shape[0]]
    for stage in range(4):
        blocks = 0
        while f"stages.{stage}.{blocks}.{conv}" in state:
            weights.append(state[f"stages.{stage}.{blocks}.{conv}"])
            blocks += 1
        num_blocks.append(blocks)
        channels.append(weights[-1].shape[0] if blocks else 0)
    groups, in_channels = 1, stem.shape[1]
    for weight in weights:
        # A grouped conv's weight holds in_channels / groups input channels.
        groups = max(groups, in_channels // max(1, weight.shape[1]))
        in_channels = weight.shape[0]
    return Structure(stem.shape[1], tuple(num_blocks), tuple(channels), groups)
