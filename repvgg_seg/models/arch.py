"""RepVGG architectures as data (paper Sec. 3.4, Tables 2-3).

Every variant is one :class:`RepVGGArch` entry in :data:`ARCHS`; nothing else in the
package knows a width or a depth.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        raise ValueError(
            f"Unknown RepVGG variant {name!r}; valid variants are {', '.join(ARCHS)} "
            "(optionally written as 'RepVGG-B2' or 'repvgg_b2')."
        )
    return by_lower[key.lower()]


def get_arch(name: str | RepVGGArch) -> RepVGGArch:
    """Returns the :class:`RepVGGArch` of a variant name, or ``name`` itself if it is one."""
    if isinstance(name, RepVGGArch):
        return name
    return ARCHS[canonical_arch_name(name)]
