"""Winograd F(4x4, 3x3) convolution as tensor ops: the algorithm behind ``WinogradConv2d``.

A deployed RepVGG is a stack of 3x3 convs, and 3x3 convs admit Winograd's minimal filtering
algorithm (Lavin & Gray, CVPR 2016), which GPU libraries use and which is the paper's speed
argument. F(4x4, 3x3) computes each 4x4 output tile from a 6x6 input tile with 36 products
instead of 144, so the conv becomes 36 matrix products of a quarter of the direct
multiply-accumulates, plus input and output transforms:

    Y = A^T [ (G g G^T) * (B^T d B) ] A      (per tile, per input/output channel pair)

oneDNN (PyTorch's CPU conv) has no Winograd kernel on AVX2 machines, so here it is written
with tensor ops: the transforms as per-coefficient adds over channels-last slabs (contiguous
channel vectors, one pass per nonzero coefficient), the products as one batched GEMM per
group. A dilated conv is an ordinary conv on each of the ``d x d`` sub-lattices of the input,
so dilation costs nothing extra (oneDNN's dilated convs are its slowest).

The result equals the direct conv up to float32 round-off (the transforms' coefficients are
at most 8 in magnitude; tests bound the difference). When a conv takes this path is
:mod:`repvgg_seg.deploy.winograd`'s business.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Interpolation points 0, 1, -1, 2, -2 and infinity (Lavin & Gray, F(4x4, 3x3)).
_BT = (
    (4, 0, -5, 0, 1, 0),
    (0, -4, -4, 1, 1, 0),
    (0, 4, -4, -1, 1, 0),
    (0, -2, -1, 2, 1, 0),
    (0, 2, -1, -2, 1, 0),
    (0, 4, 0, -5, 0, 1),
)
_G = (
    (1 / 4, 0, 0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0, 0, 1),
)
_AT = (
    (1, 1, 1, 1, 1, 0),
    (0, 1, -1, 2, -2, 0),
    (0, 1, 1, 4, 4, 0),
    (0, 1, -1, 8, -8, 1),
)
TILE = 4  # output tile side; input tiles are TILE + 2


def transform_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """``G g G^T`` of every 3x3 kernel, laid out for the batched products.

    Args:
        weight: ``(out_channels, in_channels / groups, 3, 3)``.
        groups: The conv's groups.

    Returns:
        ``(groups, 36, in_channels / groups, out_channels / groups)`` float32, computed in
        float64 so that the transform adds no round-off of its own.
    """
    out_channels, in_per_group = weight.shape[:2]
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    u = g @ weight.detach().double() @ g.T  # (out, in/g, 6, 6)
    u = u.reshape(groups, out_channels // groups, in_per_group, 36).permute(0, 3, 2, 1)
    return u.to(weight.dtype).contiguous()


def _combine(out: torch.Tensor, coefficients: Sequence[int], terms: Sequence[torch.Tensor]):
    """``out = sum(c * t)`` over the nonzero coefficients, one pass over memory per term."""
    nonzero = [(c, t) for c, t in zip(coefficients, terms) if c != 0]
    (c0, t0), (c1, t1) = nonzero[0], nonzero[1]
    if c0 == 1:
        torch.add(t0, t1, alpha=c1, out=out)
    elif c1 == 1:
        torch.add(t1, t0, alpha=c0, out=out)
    else:
        torch.mul(t0, c0, out=out)
        out.add_(t1, alpha=c1)
    for c, t in nonzero[2:]:
        out.add_(t, alpha=c)
    return out


def _tile_grid(h: int, w: int, padding: int, dilation: int) -> tuple[int, int]:
    """Output tiles per sub-lattice image, vertically and horizontally."""
    sub_h = -(-(h + 2 * padding) // dilation)
    sub_w = -(-(w + 2 * padding) // dilation)
    return -(-(sub_h - 2) // TILE), -(-(sub_w - 2) // TILE)


def _input_tiles(x: torch.Tensor, padding: int, dilation: int) -> torch.Tensor:
    """Zero-padded, channels-last sub-lattice images: ``(N * d * d, 4 th + 2, 4 tw + 2, C)``.

    Sub-lattice ``(sy, sx)`` holds input pixels ``(d u + sy - p, d v + sx - p)``; a dilated
    3x3 conv of the input is an undilated 3x3 conv of each sub-lattice image.
    """
    n, c, h, w = x.shape
    d = dilation
    tiles_h, tiles_w = _tile_grid(h, w, padding, d)
    rows, cols = TILE * tiles_h + 2, TILE * tiles_w + 2
    padded = x.new_zeros(n, rows * d, cols * d, c)
    padded[:, padding : padding + h, padding : padding + w] = x.permute(0, 2, 3, 1)
    if d > 1:
        padded = padded.view(n, rows, d, cols, d, c).permute(0, 2, 4, 1, 3, 5)
        padded = padded.reshape(n * d * d, rows, cols, c)
    return padded


def _input_transform(padded: torch.Tensor, tiles_h: int, tiles_w: int) -> torch.Tensor:
    """``B^T d B`` of every 6x6 tile: ``(36, N * d * d * th * tw, C)``."""
    batch, _, cols, c = padded.shape
    rows = [padded[:, p : p + TILE * tiles_h : TILE] for p in range(6)]
    row_transformed = padded.new_empty(6, batch, tiles_h, cols, c)
    for i in range(6):
        _combine(row_transformed[i], _BT[i], rows)
    out = padded.new_empty(36, batch, tiles_h, tiles_w, c)
    for i in range(6):
        columns = [row_transformed[i][:, :, q : q + TILE * tiles_w : TILE] for q in range(6)]
        for j in range(6):
            _combine(out[6 * i + j], _BT[j], columns)
    return out.view(36, batch * tiles_h * tiles_w, c)


def _output_transform(products: torch.Tensor, out: torch.Tensor) -> None:
    """``A^T m A`` of every tile: ``(36, B, th, tw, C)`` products into ``(B, th, 4, tw, 4, C)``."""
    m = products.view(6, 6, *products.shape[1:])
    half = products.new_empty(TILE, 6, *products.shape[1:])
    for r in range(TILE):
        for j in range(6):
            _combine(half[r, j], _AT[r], [m[i, j] for i in range(6)])
    for r in range(TILE):
        for s in range(TILE):
            _combine(out[:, :, r, :, s], _AT[s], [half[r, j] for j in range(6)])


CHUNK_BYTES = 64 * 2**20
"""Largest transformed-input chunk: the whole input of a 512-channel layer at 64x128, a
fifth of the PSP head's 4096-channel bottleneck input."""

OUTPUT_CHUNK = 256
"""Outputs per product when a group has more than ``2 * OUTPUT_CHUNK`` of them: the 2048
outputs of B1g2-fast's last layer ran 13 % faster in chunks of 256 (the products and their
transform stay in cache); 512 outputs ran best whole."""

# The output transform's column for interpolation point 1 is all ones (1^k), so a constant
# added to that plane of the products reaches every output pixel exactly once.
_BIAS_PLANE = 6 * 1 + 1


def _ranges(length: int, step: int) -> list[tuple[int, int]]:
    return [(start, min(start + step, length)) for start in range(0, length, step)]


def _channel_chunks(channels: int, tiles: int, element_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` input-channel ranges whose transform (36 values per tile and
    channel) fits :data:`CHUNK_BYTES`, in steps of at least 64 channels."""
    per_channel = 36 * tiles * element_size
    return _ranges(channels, max(64, CHUNK_BYTES // per_channel // 64 * 64))


def _output_chunks(channels: int) -> list[tuple[int, int]]:
    return _ranges(channels, OUTPUT_CHUNK if channels > 2 * OUTPUT_CHUNK else channels)


def winograd_conv2d(
    x: torch.Tensor,
    weight_transformed: torch.Tensor,
    bias: torch.Tensor | None,
    padding: int,
    dilation: int,
) -> torch.Tensor:
    """A 3x3, stride-1 conv by Winograd F(4x4, 3x3); equals ``F.conv2d`` up to round-off.

    Args:
        x: ``(N, C, H, W)`` input, any memory format (the output has the input's format).
        weight_transformed: :func:`transform_weight` of the conv's weight.
        bias: ``(out_channels,)`` or None.
        padding: Zero padding on every side.
        dilation: The conv's dilation.
    """
    n, _, h, w = x.shape
    groups, _, in_per_group, out_per_group = weight_transformed.shape
    out_h = h + 2 * padding - 2 * dilation
    out_w = w + 2 * padding - 2 * dilation
    tiles_h, tiles_w = _tile_grid(h, w, padding, dilation)
    batch = n * dilation * dilation
    out = x.new_empty(batch, tiles_h, TILE, tiles_w, TILE, groups * out_per_group)
    # Input channels go through the transform in chunks that are summed into the products,
    # so the transformed input (2.25x the input) need not exist all at once; with several
    # output chunks the transformed chunks are kept for the next ones.
    input_chunks = _channel_chunks(in_per_group, batch * tiles_h * tiles_w, x.element_size())
    output_chunks = _output_chunks(out_per_group)
    for g in range(groups):
        kept: list[torch.Tensor] = []
        for out_start, out_stop in output_chunks:
            products = None
            for index, (start, stop) in enumerate(input_chunks):
                if index < len(kept):
                    transformed = kept[index]
                else:
                    first = g * in_per_group
                    padded = _input_tiles(x[:, first + start : first + stop], padding, dilation)
                    transformed = _input_transform(padded, tiles_h, tiles_w)
                    del padded
                    if len(output_chunks) > 1:
                        kept.append(transformed)
                weight = weight_transformed[g, :, start:stop, out_start:out_stop]
                if products is None:
                    products = torch.bmm(transformed, weight)  # (36, tiles, outputs)
                else:
                    products.baddbmm_(transformed, weight)
                del transformed
            channels = slice(g * out_per_group + out_start, g * out_per_group + out_stop)
            if bias is not None:
                products[_BIAS_PLANE].add_(bias[channels])
            _output_transform(
                products.view(36, batch, tiles_h, tiles_w, out_stop - out_start),
                out[..., channels],
            )
            del products
    d = dilation
    out = out.view(n, d, d, tiles_h * TILE, tiles_w * TILE, -1)
    out = out.permute(0, 3, 1, 4, 2, 5).reshape(n, tiles_h * TILE * d, tiles_w * TILE * d, -1)
    out = out[:, :out_h, :out_w].permute(0, 3, 1, 2)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return out.contiguous(memory_format=torch.channels_last)
    return out.contiguous()
