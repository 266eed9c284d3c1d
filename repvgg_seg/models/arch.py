"""RepVGG architectures as data (paper Sec. 3.4, Tables 2-3, Sec. 4.3).

Every variant is one :class:`RepVGGArch` entry in :data:`ARCHS`, every dilation setting one
entry in :data:`DILATION_MODES`, every kind of block one name in :data:`BLOCK_TYPES`, and
:func:`layer_plan` turns variant and dilation into the list of layers (channels, stride,
dilation, groups, identity branch). The backbone builds its
blocks from that plan and the benchmark's plain reference network its convs; nothing else
in the package knows a width, a depth or a dilation rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import UsageError

# Counting the stem as layer 0, these layers are groupwise in the g2/g4 variants
# ("3rd, 5th, ..., 21st layer of A, plus 23rd, 25th, 27th of B").
GROUPWISE_LAYERS = frozenset(range(2, 27, 2))

A_DEPTHS = (2, 4, 14, 1)
B_DEPTHS = (4, 6, 16, 1)


@dataclass(frozen=True)
class RepVGGArch:
    """One RepVGG variant.

    Attributes:
        num_blocks: Layers in paper stages 2-5 (the stem, stage 1, is always one layer).
        width_multipliers: ``(a, b)``: stages 1-4 scale 64/64/128/256 channels by ``a``,
            stage 5 scales 512 channels by ``b``.
        groups: Groups of the groupwise layers (:data:`GROUPWISE_LAYERS`); 1 for dense.
    """

    num_blocks: tuple[int, int, int, int]
    width_multipliers: tuple[float, float]
    groups: int = 1

    @property
    def channels(self) -> tuple[int, int, int, int, int]:
        """Output channels of the five stages, stem first."""
        a, b = self.width_multipliers
        return (min(64, int(64 * a)), int(64 * a), int(128 * a), int(256 * a), int(512 * b))

    @property
    def num_layers(self) -> int:
        """Number of 3x3 layers, stem included."""
        return 1 + sum(self.num_blocks)

    def layer_groups(self, layer_index: int) -> int:
        """Groups of layer ``layer_index`` (0 is the stem)."""
        return self.groups if layer_index in GROUPWISE_LAYERS else 1


ARCHS: dict[str, RepVGGArch] = {
    "A0": RepVGGArch(A_DEPTHS, (0.75, 2.5)),
    "A1": RepVGGArch(A_DEPTHS, (1.0, 2.5)),
    "A2": RepVGGArch(A_DEPTHS, (1.5, 2.75)),
    "B0": RepVGGArch(B_DEPTHS, (1.0, 2.5)),
    "B1": RepVGGArch(B_DEPTHS, (2.0, 4.0)),
    "B1g2": RepVGGArch(B_DEPTHS, (2.0, 4.0), groups=2),
    "B1g4": RepVGGArch(B_DEPTHS, (2.0, 4.0), groups=4),
    "B2": RepVGGArch(B_DEPTHS, (2.5, 5.0)),
    "B2g2": RepVGGArch(B_DEPTHS, (2.5, 5.0), groups=2),
    "B2g4": RepVGGArch(B_DEPTHS, (2.5, 5.0), groups=4),
    "B3": RepVGGArch(B_DEPTHS, (3.0, 5.0)),
    "B3g2": RepVGGArch(B_DEPTHS, (3.0, 5.0), groups=2),
    "B3g4": RepVGGArch(B_DEPTHS, (3.0, 5.0), groups=4),
}


# name -> (strides, dilations, dilated_layers): per-stage values for the five stages, stem
# first; dilated_layers limits dilation to the last N layers of the network (None: all).
# "fast" is our reading of paper Sec. 4.3: stages 4 and 5 keep stride 1 (output stride 8),
# but only the last 4 layers of stage 4 and the stage-5 layer are dilated.
DILATION_MODES: dict[str, tuple[tuple[int, ...], tuple[int, ...], int | None]] = {
    "classification": ((2, 2, 2, 2, 2), (1, 1, 1, 1, 1), None),
    "dilated": ((2, 2, 2, 1, 1), (1, 1, 1, 2, 4), None),
    "fast": ((2, 2, 2, 1, 1), (1, 1, 1, 2, 4), 5),
}


# The kinds of block a network can be built of (classes in models.blocks.BLOCKS). QARepVGG
# (Chu et al., AAAI 2024) keeps RepVGG's layer plan and changes only the block; the stem is a
# block of the same kind. Both deploy to the same 3x3 conv + ReLU layers.
BLOCK_TYPES: tuple[str, ...] = ("RepVGG", "QARepVGG")


def has_identity_branch(in_channels: int, out_channels: int, stride: int) -> bool:
    """A block gets the identity (BN) branch only where it preserves shape."""
    return in_channels == out_channels and stride == 1


@dataclass(frozen=True)
class LayerSpec:
    """One 3x3 layer of a RepVGG network (a block, or one fused conv once deployed).

    Attributes:
        stage: Paper stage index, 0 for the stem.
        index: Layer index over the whole network, 0 for the stem.
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride (only the first layer of a stage may have one above 1).
        dilation: Dilation of the 3x3 conv; its padding equals it.
        groups: Conv groups.
    """

    stage: int
    index: int
    in_channels: int
    out_channels: int
    stride: int
    dilation: int
    groups: int

    @property
    def identity(self) -> bool:
        """The training-time block has an identity branch."""
        return has_identity_branch(self.in_channels, self.out_channels, self.stride)


def layer_plan(
    arch: RepVGGArch,
    strides: Sequence[int],
    dilations: Sequence[int],
    dilated_layers: int | None = None,
    in_channels: int = 3,
) -> tuple[tuple[LayerSpec, ...], ...]:
    """The layers of a network, grouped by stage (stem first).

    Args:
        arch: The variant.
        strides: Stride of each of the five stages, applied by its first layer.
        dilations: Dilation of each of the five stages.
        dilated_layers: Dilate only the last N layers of the network (the others use
            dilation 1); None dilates whole stages.
        in_channels: Input image channels.
    """
    first_dilated = arch.num_layers - (dilated_layers or arch.num_layers)
    stages, index = [], 0
    for stage, depth in enumerate((1, *arch.num_blocks)):
        layers = []
        for position in range(depth):
            out_channels = arch.channels[stage]
            layers.append(
                LayerSpec(
                    stage=stage,
                    index=index,
                    in_channels=in_channels,
                    out_channels=out_channels,
                    stride=strides[stage] if position == 0 else 1,
                    dilation=dilations[stage] if index >= first_dilated else 1,
                    groups=arch.layer_groups(index),
                )
            )
            in_channels = out_channels
            index += 1
        stages.append(tuple(layers))
    return tuple(stages)


def check_block_type(block_type: str) -> str:
    """Returns ``block_type`` if it is one of :data:`BLOCK_TYPES`.

    Raises:
        ValueError: It is not; the message lists the valid ones.
    """
    if block_type not in BLOCK_TYPES:
        raise UsageError(
            f"Unknown block_type {block_type!r}; choose one of {', '.join(BLOCK_TYPES)}."
        )
    return block_type


def _split_block_type(name: str) -> tuple[str, str]:
    """``'QARepVGG-A0'`` -> ``('QARepVGG', 'A0')``; no block type prefix -> RepVGG."""
    for block_type in BLOCK_TYPES:
        for separator in ("-", "_", ""):
            prefix = f"{block_type}{separator}".lower()
            if name.lower().startswith(prefix):
                return block_type, name[len(prefix) :]
    return BLOCK_TYPES[0], name


@dataclass(frozen=True)
class ModelName:
    """A network named by block type and variant, as ``--model QARepVGG-A0`` names it.

    Attributes:
        block_type: One of :data:`BLOCK_TYPES`.
        arch: Canonical variant name (``'A0'``).
    """

    block_type: str
    arch: str

    @classmethod
    def parse(cls, name: str) -> ModelName:
        """``'QARepVGG-A0'`` / ``'qarepvgg_a0'`` -> QARepVGG A0; ``'RepVGG-A0'`` or ``'A0'``
        -> RepVGG A0.

        Raises:
            ValueError: No such variant; the message lists the valid names.
        """
        block_type, arch = _split_block_type(name.strip())
        if arch.lower() not in {variant.lower() for variant in ARCHS}:
            raise UsageError(
                f"Unknown RepVGG variant {name!r}; valid variants are {', '.join(ARCHS)} "
                f"(optionally with the block type: "
                f"{' or '.join(repr(f'{t}-B2') for t in BLOCK_TYPES)})."
            )
        return cls(block_type, canonical_arch_name(arch))

    @property
    def canonical(self) -> str:
        """``'A0'`` for RepVGG (the name pretraining checkpoints have always recorded),
        ``'QARepVGG-A0'`` otherwise."""
        return self.arch if self.block_type == BLOCK_TYPES[0] else str(self)

    def __str__(self) -> str:
        return f"{self.block_type}-{self.arch}"


def canonical_arch_name(name: str) -> str:
    """Maps ``'B1g2'``, ``'RepVGG-B1g2'``, ``'repvgg_b1g2'`` or ``'b1g2'`` to ``'B1g2'``.

    Raises:
        ValueError: ``name`` is no RepVGG variant; the message lists the valid ones.
    """
    key = name.strip()
    for prefix in ("repvgg-", "repvgg_", "repvgg"):
        if key.lower().startswith(prefix):
            key = key[len(prefix) :]
            break
    by_lower = {arch.lower(): arch for arch in ARCHS}
    if key.lower() not in by_lower:
        raise UsageError(
            f"Unknown RepVGG variant {name!r}; valid variants are {', '.join(ARCHS)} "
            "(optionally written as 'RepVGG-B2' or 'repvgg_b2')."
        )
    return by_lower[key.lower()]


def get_arch(name: str | RepVGGArch) -> RepVGGArch:
    """Returns the :class:`RepVGGArch` of a variant name, or ``name`` itself if it is one."""
    if isinstance(name, RepVGGArch):
        return name
    return ARCHS[canonical_arch_name(name)]
