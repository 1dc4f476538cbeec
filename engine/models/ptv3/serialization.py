"""Provides PTv3's space-filling-curve serialization: z-order and Hilbert codes, depth rules, orders.

Written from the definitions, not ported: z-order interleaves coordinate bits (x at bit 3i+2, y at
3i+1, z at 3i, as OCNN's `xyz2key`); the Hilbert index follows Skilling's transpose algorithm
("Programming the Hilbert curve", AIP Conf. Proc. 707, 2004) with axis 0 most significant and a
final Gray decode over the interleaved bits, which is the convention of Pointcept's `hilbert.encode`.
The "-trans" variants swap x and y first. Codes are prefixed with the scene index:
`code = batch << (3 * depth) | curve_code`.
"""

from __future__ import annotations

import torch

from engine.errors import DataError

SERIALIZATION_ORDERS = ("z", "z-trans", "hilbert", "hilbert-trans")
DEPTH_RULES = ("bit_length", "max_plus_one")
_MAX_DEPTH = 16


def encode_z_order(grid_coord: torch.Tensor, depth: int) -> torch.Tensor:
    """Interleaves the bits of integer grid coordinates into a Morton code.

    Args:
        grid_coord: (N, 3) non-negative integer voxel coordinates (x, y, z).
        depth: number of bits per axis to interleave.

    Returns:
        (N,) int64 codes with bit i of x at 3i+2, of y at 3i+1 and of z at 3i.
    """
    g = grid_coord.long()
    code = torch.zeros(g.shape[0], dtype=torch.long, device=g.device)
    for i in range(depth):
        code |= ((g[:, 0] >> i) & 1) << (3 * i + 2)
        code |= ((g[:, 1] >> i) & 1) << (3 * i + 1)
        code |= ((g[:, 2] >> i) & 1) << (3 * i)
    return code


def encode_hilbert(grid_coord: torch.Tensor, depth: int) -> torch.Tensor:
    """Computes the 3D Hilbert index of integer grid coordinates on a 2^depth cube.

    Args:
        grid_coord: (N, 3) non-negative integer voxel coordinates below 2^depth.
        depth: bits per axis (the curve's order).

    Returns:
        (N,) int64 Hilbert indices in [0, 2^(3*depth)).
    """
    x = [grid_coord[:, d].long().clone() for d in range(3)]
    if depth <= 0:
        return torch.zeros_like(x[0])
    # 1. Skilling's inverse-undo, most significant bit first: where an axis has the bit set,
    #    invert the lower bits of axis 0; otherwise exchange the lower bits of axis 0 and that axis.
    q = 1 << (depth - 1)
    while q > 1:
        lower = q - 1
        for d in range(3):
            bit_set = (x[d] & q) != 0
            x[0] = torch.where(bit_set, x[0] ^ lower, x[0])
            t = torch.where(bit_set, torch.zeros_like(x[0]), (x[0] ^ x[d]) & lower)
            x[0] = x[0] ^ t
            x[d] = x[d] ^ t
        q >>= 1
    # 2. Interleave, axis 0 most significant within each bit level.
    gray = torch.zeros_like(x[0])
    for b in range(depth - 1, -1, -1):
        for d in range(3):
            gray = (gray << 1) | ((x[d] >> b) & 1)
    # 3. Gray decode of the whole 3*depth-bit word (prefix xor from the top bit down).
    code = gray.clone()
    shift = 1
    while shift < 3 * depth:
        code ^= code >> shift
        shift <<= 1
    return code


def encode_order(grid_coord: torch.Tensor, batch: torch.Tensor, depth: int, order: str) -> torch.Tensor:
    """Encodes one serialization order with the scene index in the top bits.

    Args:
        grid_coord: (N, 3) integer voxel coordinates.
        batch: (N,) int64 scene index per point.
        depth: bits per axis.
        order: one of `SERIALIZATION_ORDERS`.

    Returns:
        (N,) int64 codes `batch << (3 * depth) | curve_code`.
    """
    if order == "z":
        code = encode_z_order(grid_coord, depth)
    elif order == "z-trans":
        code = encode_z_order(grid_coord[:, [1, 0, 2]], depth)
    elif order == "hilbert":
        code = encode_hilbert(grid_coord, depth)
    elif order == "hilbert-trans":
        code = encode_hilbert(grid_coord[:, [1, 0, 2]], depth)
    else:
        raise ValueError(f"order: unknown serialization order, got {order!r}. Use one of {SERIALIZATION_ORDERS}.")
    return (batch.long() << (3 * depth)) | code


def serialization_depth(grid_coord: torch.Tensor, rule: str = "bit_length") -> int:
    """Returns the number of bits per axis used to serialize a batch.

    Args:
        grid_coord: (N, 3) integer voxel coordinates of the whole batch.
        rule: "bit_length" is SceneSplat's and Pointcept <= 1.5's `int(max).bit_length()`;
            "max_plus_one" is Pointcept >= 1.6's `int(max + 1).bit_length()`. They differ when the
            largest coordinate is 2^k - 1.

    Raises:
        DataError: when the coordinates need more than 16 bits per axis.
    """
    grid_max = int(grid_coord.max()) if grid_coord.numel() else 0
    if rule == "bit_length":
        depth = grid_max.bit_length()
    elif rule == "max_plus_one":
        depth = (grid_max + 1).bit_length()
    else:
        raise ValueError(f"serialization_depth_rule: unknown rule, got {rule!r}. Use one of {DEPTH_RULES}.")
    if depth > _MAX_DEPTH:
        raise DataError(
            f"grid_coord: serialization supports at most {_MAX_DEPTH} bits per axis, got a largest "
            f"voxel coordinate of {grid_max!r}. Use a larger grid_size or crop the scene."
        )
    return depth


def serialize(
    grid_coord: torch.Tensor, batch: torch.Tensor, orders: tuple[str, ...] | list[str], depth: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Computes codes, sort orders and inverse permutations for every serialization order.

    Args:
        grid_coord: (N, 3) integer voxel coordinates.
        batch: (N,) int64 scene index per point.
        orders: serialization order names.
        depth: bits per axis.

    Returns:
        code (O, N) int64, order (O, N) int64 argsort of each code row, inverse (O, N) with
        `order[o][inverse[o]] == arange(N)`.
    """
    num_scenes_bits = (int(batch.max()) + 1).bit_length() if batch.numel() else 1
    if 3 * depth + num_scenes_bits > 63:
        raise DataError(
            f"grid_coord: {depth} bits per axis and {num_scenes_bits} bits of scene index do not fit "
            f"in a 63-bit code, got depth {depth!r}. Use a larger grid_size or fewer scenes per batch."
        )
    code = torch.stack([encode_order(grid_coord, batch, depth, o) for o in orders])
    order = torch.argsort(code, dim=1)
    inverse = torch.empty_like(order)
    arange = torch.arange(code.shape[1], device=code.device).expand_as(order)
    inverse.scatter_(1, order, arange)
    return code, order, inverse
