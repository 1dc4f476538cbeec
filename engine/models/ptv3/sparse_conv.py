"""Provides the submanifold 3D convolution used by PTv3's stem and CPE, with its two backends.

The weight uses spconv's KRSC layout `W[out, a, b, c, in]` so checkpoints load unchanged:
`out[p] = bias + sum_{a,b,c} W[:, a, b, c, :] @ x[p + (a - k//2, b - k//2, c - k//2)]` over active
sites of the same scene, evaluated only at the input sites. The pure-torch backend hashes
(batch, x, y, z), sorts the keys once and finds every neighbour with `searchsorted`; the resulting
neighbour map is cached on the level (like spconv's indice keys) and reused by every block of that
level and by the decoder. spconv is used only on CUDA: its CPU wheel is wrong with >1 thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine.errors import HardwareError

SPARSE_CONV_BACKENDS = ("auto", "torch", "spconv")


def _import_spconv() -> Any | None:
    try:
        import spconv.pytorch as spconv  # noqa: PLC0415
    except ImportError:
        return None
    return spconv


@dataclass(frozen=True)
class NeighbourMap:
    """Index pairs of a submanifold convolution, one pair list per kernel offset.

    Attributes:
        kernel_size: k of the k^3 kernel.
        num_points: number of active sites (rows of the input and output).
        offsets: flat kernel indices (a*k*k + b*k + c) that have at least one pair.
        out_index: per entry of `offsets`, (P,) int64 output rows.
        in_index: per entry of `offsets`, (P,) int64 input rows.
    """

    kernel_size: int
    num_points: int
    offsets: tuple[int, ...]
    out_index: tuple[torch.Tensor, ...]
    in_index: tuple[torch.Tensor, ...]


def build_neighbour_map(batch: torch.Tensor, grid_coord: torch.Tensor, kernel_size: int) -> NeighbourMap:
    """Finds, for every kernel offset, which active sites read which active neighbours.

    Args:
        batch: (N,) int64 scene index per site.
        grid_coord: (N, 3) integer voxel coordinates, unique within a scene.
        kernel_size: odd kernel size k.

    Returns:
        The neighbour map; the centre offset maps every site to itself.
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size: submanifold convolution needs an odd size, got {kernel_size!r}.")
    device = grid_coord.device
    n = grid_coord.shape[0]
    r = kernel_size // 2
    g = grid_coord.long() + r  # shift so every neighbour coordinate is non-negative
    extent = int(g.max()) + r + 1 if n else 1
    b = batch.long()

    def key(coords: torch.Tensor) -> torch.Tensor:
        return ((b * extent + coords[:, 0]) * extent + coords[:, 1]) * extent + coords[:, 2]

    site_key = key(g)
    sorted_key, sort_index = torch.sort(site_key)
    rng = torch.arange(-r, r + 1, device=device)
    delta = torch.stack(torch.meshgrid(rng, rng, rng, indexing="ij"), dim=-1).reshape(-1, 3)  # (k^3, 3)
    centre = delta.shape[0] // 2
    offsets, out_index, in_index = [], [], []
    arange = torch.arange(n, device=device)
    for o in range(delta.shape[0]):
        if o == centre:
            offsets.append(o)
            out_index.append(arange)
            in_index.append(arange)
            continue
        query = key(g + delta[o])
        pos = torch.searchsorted(sorted_key, query).clamp_(max=max(n - 1, 0))
        hit = sorted_key[pos] == query
        if not bool(hit.any()):
            continue
        offsets.append(o)
        out_index.append(arange[hit])
        in_index.append(sort_index[pos[hit]])
    return NeighbourMap(kernel_size, n, tuple(offsets), tuple(out_index), tuple(in_index))


def submanifold_conv3d(
    feat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, nmap: NeighbourMap
) -> torch.Tensor:
    """Applies a submanifold convolution with a precomputed neighbour map (pure torch).

    Args:
        feat: (N, C_in) features at the active sites.
        weight: (C_out, k, k, k, C_in) spconv KRSC kernel.
        bias: (C_out,) or None.
        nmap: neighbour map of these sites for kernel size k.

    Returns:
        (N, C_out) features at the same sites.
    """
    c_out, k = weight.shape[0], weight.shape[1]
    w = weight.reshape(c_out, k * k * k, -1)  # (C_out, k^3, C_in)
    centre = (k * k * k) // 2
    out = feat @ w[:, centre, :].t()
    for o, oi, ii in zip(nmap.offsets, nmap.out_index, nmap.in_index):
        if o == centre:
            continue
        out = out.index_add(0, oi, feat[ii] @ w[:, o, :].t())
    if bias is not None:
        out = out + bias
    return out


class TorchSparseConvBackend:
    """Pure-torch submanifold convolution; works on every device."""

    name = "torch"

    def conv(self, module: SubMConv3d, feat: torch.Tensor, level: dict) -> torch.Tensor:
        """Convolves `feat` (N, C_in) at the level's sites; caches the neighbour map on the level."""
        maps = level.setdefault("_neighbour_maps", {})
        k = module.kernel_size
        if k not in maps:
            maps[k] = build_neighbour_map(level["batch"], level["grid_coord"], k)
        return submanifold_conv3d(feat, module.weight, module.bias, maps[k])


class SpconvSparseConvBackend:
    """spconv's SubMConv3d on CUDA, sharing the module's weight and bias tensors."""

    name = "spconv"

    def __init__(self) -> None:
        self._spconv = _import_spconv()
        if self._spconv is None:
            raise HardwareError(
                "sparse_conv_backend: `spconv` was requested but is not importable, got 'spconv'. "
                "Install spconv for your CUDA version (e.g. `pip install spconv-cu120`) or use 'torch'."
            )

    def conv(self, module: SubMConv3d, feat: torch.Tensor, level: dict) -> torch.Tensor:
        """Convolves `feat` (N, C_in) with spconv; the level's SparseConvTensor keeps the indice maps."""
        if not feat.is_cuda:
            raise HardwareError(
                "sparse_conv_backend: spconv runs only on CUDA here (its CPU kernels give wrong results "
                "with more than one thread), got a tensor on "
                f"{str(feat.device)!r}. Use sparse_conv_backend='torch' or 'auto' on CPU."
            )
        spconv = self._spconv
        base = level.get("_spconv_tensor")
        if base is None:
            indices = torch.cat([level["batch"].unsqueeze(-1), level["grid_coord"]], dim=1).int().contiguous()
            shape = (level["grid_coord"].max(0).values + 96).tolist()
            base = spconv.SparseConvTensor(feat, indices, shape, int(level["batch"][-1]) + 1)
            level["_spconv_tensor"] = base
        impl = module.__dict__.get("_spconv_impl")
        if impl is None:
            impl = spconv.SubMConv3d(
                module.in_channels, module.out_channels, module.kernel_size,
                bias=module.bias is not None, indice_key=module.indice_key,
            )
            # Share the parameters so state_dict, optimizers and LoRA see one set of tensors.
            impl.weight = module.weight
            if module.bias is not None:
                impl.bias = module.bias
            module.__dict__["_spconv_impl"] = impl
        # replace_feature keeps the same indice_dict, so maps are built once per level and key.
        return impl(base.replace_feature(feat)).features


class AutoSparseConvBackend:
    """spconv for CUDA tensors when spconv is importable, pure torch otherwise (decided per call)."""

    name = "auto"

    def __init__(self) -> None:
        self._torch = TorchSparseConvBackend()
        self._spconv = SpconvSparseConvBackend() if _import_spconv() is not None else None

    def conv(self, module: SubMConv3d, feat: torch.Tensor, level: dict) -> torch.Tensor:
        """Dispatches on the tensor's device."""
        if feat.is_cuda and self._spconv is not None:
            return self._spconv.conv(module, feat, level)
        return self._torch.conv(module, feat, level)


def build_sparse_conv_backend(name: str) -> TorchSparseConvBackend | SpconvSparseConvBackend | AutoSparseConvBackend:
    """Chooses the sparse-convolution backend once.

    Raises:
        HardwareError: when 'spconv' is requested and spconv is not importable.
    """
    if name == "torch":
        return TorchSparseConvBackend()
    if name == "spconv":
        return SpconvSparseConvBackend()
    if name == "auto":
        return AutoSparseConvBackend()
    raise ValueError(f"sparse_conv_backend: unknown backend, got {name!r}. Use one of {SPARSE_CONV_BACKENDS}.")


class SubMConv3d(nn.Module):
    """Submanifold 3D convolution holding spconv-layout parameters (`weight`, optional `bias`).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel size k (the kernel is always centred, as spconv does for subm).
        bias: whether to add a bias.
        indice_key: spconv's cache key, kept for the spconv backend.
        backend: the backend object shared by the whole model.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        indice_key: str | None = None,
        backend: Any = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.indice_key = indice_key
        self.backend = backend if backend is not None else TorchSparseConvBackend()
        k = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, k, k, k, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform init over the fan-in k^3 * C_in (as a dense conv of the same shape)."""
        fan_in = self.in_channels * self.kernel_size**3
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, feat: torch.Tensor, level: dict) -> torch.Tensor:
        """Convolves features (N, C_in) at the sites of `level` (needs its `batch`, `grid_coord`)."""
        return self.backend.conv(self, feat, level)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"bias={self.bias is not None}, indice_key={self.indice_key!r}"
        )
