"""Provides the submanifold 3D convolution used by PTv3's stem and CPE, with its two backends.

The weight uses spconv's KRSC layout `W[out, a, b, c, in]` so checkpoints load unchanged:
`out[p] = bias + sum_{a,b,c} W[:, a, b, c, :] @ x[p + (a - k//2, b - k//2, c - k//2)]` over active
sites of the same scene, evaluated only at the input sites. The pure-torch backend hashes
(batch, x, y, z), sorts the keys once and finds every neighbour with `searchsorted`; the resulting
neighbour map is cached on the level (like spconv's indice keys) and reused by every block of that
level and by the decoder. The convolution walks the map's pairs offset by offset in fixed-size chunks
(gather rows, multiply by that offset's kernel, add into the output), forward and backward, so its
transient memory is two chunk buffers, never all pairs at once (`_chunk_rows`). spconv is used only
on CUDA: its CPU wheel is wrong with >1 thread. No backend keeps the spconv module object on itself
(module objects cannot be deep-copied, and `copy.deepcopy(model)` must work).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from engine.errors import HardwareError

SPARSE_CONV_BACKENDS = ("auto", "torch", "spconv")
# The dense neighbour lookup table is used when it has at most this many cells (128 MiB of int64)
# or at most this many cells per neighbour query; otherwise sorted keys are binary-searched.
_DENSE_TABLE_MAX = 1 << 24
_DENSE_CELLS_PER_QUERY = 16
# Elements per chunk buffer of the CPU convolution (1 MiB of fp32): small enough to stay in cache
# between the gather and the product, large enough that per-chunk call overhead is negligible.
_CPU_CHUNK_ELEMS = 1 << 18


def _import_spconv() -> Any | None:
    try:
        import spconv.pytorch as spconv  # noqa: PLC0415  # lazy: optional accelerator, imported only on CUDA
    except ImportError:
        return None
    return spconv


@dataclass(frozen=True)
class NeighbourMap:
    """Index pairs of a submanifold convolution, grouped by kernel offset (the centre is implicit).

    Attributes:
        kernel_size: k of the k^3 kernel.
        num_points: number of active sites (rows of the input and output).
        offsets: flat kernel indices (a*k*k + b*k + c), centre excluded, that have at least one pair.
        bounds: len(offsets)+1 boundaries; pairs of offsets[j] are rows bounds[j]:bounds[j+1].
        out_index: (P,) int64 output rows of all non-centre pairs.
        in_index: (P,) int64 input rows of all non-centre pairs.
    """

    kernel_size: int
    num_points: int
    offsets: tuple[int, ...]
    bounds: tuple[int, ...]
    out_index: torch.Tensor
    in_index: torch.Tensor


def build_neighbour_map(batch: torch.Tensor, grid_coord: torch.Tensor, kernel_size: int) -> NeighbourMap:
    """Finds, for every kernel offset, which active sites read which active neighbours.

    Sites are hashed to `((b * E0 + x) * E1 + y) * E2 + z` on a grid padded by k//2. When that grid
    is small (see `_DENSE_TABLE_MAX`) a dense lookup table
    answers all queries with one gather; otherwise the sorted keys are searched with `searchsorted`.

    Args:
        batch: (N,) int64 scene index per site.
        grid_coord: (N, 3) integer voxel coordinates, unique within a scene.
        kernel_size: odd kernel size k.

    Returns:
        The neighbour map.
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size: submanifold convolution needs an odd size, got {kernel_size!r}.")
    device = grid_coord.device
    n = grid_coord.shape[0]
    r = kernel_size // 2
    g = grid_coord.long() + r  # shift so every neighbour coordinate is non-negative
    extent = (g.max(0).values + r + 1).tolist() if n else [1, 1, 1]
    num_scenes = int(batch.max()) + 1 if n else 1
    strides = torch.tensor([extent[1] * extent[2], extent[2], 1], device=device)
    site_key = batch.long() * (extent[0] * extent[1] * extent[2]) + (g * strides).sum(1)
    rng = torch.arange(-r, r + 1, device=device)
    delta = torch.stack(torch.meshgrid(rng, rng, rng, indexing="ij"), dim=-1).reshape(-1, 3)
    centre = delta.shape[0] // 2
    flat_offsets = torch.cat([torch.arange(centre), torch.arange(centre + 1, delta.shape[0])]).to(device)
    delta_key = (delta[flat_offsets] * strides).sum(1)  # (k^3-1,)
    table_size = num_scenes * extent[0] * extent[1] * extent[2]
    dense = table_size <= max(_DENSE_TABLE_MAX, _DENSE_CELLS_PER_QUERY * n * delta.shape[0])
    if dense:
        table = torch.full((table_size,), -1, dtype=torch.long, device=device)
        table[site_key] = torch.arange(n, device=device)
    else:
        sorted_key, sort_index = torch.sort(site_key)
    out_parts, in_parts, counts = [], [], []
    # Chunk the offsets so the (offsets, N) query block stays around 2^24 entries.
    step = max(1, (1 << 24) // max(n, 1))
    for start in range(0, delta_key.shape[0], step):
        query = site_key[None, :] + delta_key[start : start + step, None]  # (O, N)
        # torch.gather / index_select are markedly faster than advanced indexing on CPU
        if dense:
            found = torch.gather(table, 0, query.reshape(-1)).view_as(query)
        else:
            pos = torch.searchsorted(sorted_key, query.reshape(-1)).clamp_(max=max(n - 1, 0))
            hit = torch.gather(sorted_key, 0, pos) == query.reshape(-1)
            found = torch.where(hit, torch.gather(sort_index, 0, pos), -1).view_as(query)
        o_idx, out_idx = torch.nonzero(found >= 0, as_tuple=True)  # row-major: grouped by offset
        out_parts.append(out_idx)
        in_parts.append(found[o_idx, out_idx])
        counts.append(torch.bincount(o_idx, minlength=query.shape[0]))
    counts_all = torch.cat(counts).tolist()
    offsets, bounds = [], [0]
    for o, c in zip(flat_offsets.tolist(), counts_all):
        if c:
            offsets.append(o)
            bounds.append(bounds[-1] + c)
    return NeighbourMap(kernel_size, n, tuple(offsets), tuple(bounds), torch.cat(out_parts), torch.cat(in_parts))


def chunk_rows(num_points: int, c_in: int, c_out: int, device_type: str) -> int:
    """Pairs a convolution over `num_points` sites handles per step (before capping at the widest offset).

    The two chunk buffers hold `rows x (c_in + c_out)` elements: never more than `N x min(c_in, c_out)`,
    so a call's transient stays within one output's size whatever the scene (2x the output with it).
    On CPU also at most about `_CPU_CHUNK_ELEMS` per buffer, which keeps the gathered rows in cache for
    the product; on a GPU the largest chunk within the bound, so an offset takes one or two launches.
    """
    rows = max(1, num_points * min(c_in, c_out) // (c_in + c_out))
    if device_type == "cpu":
        rows = min(rows, max(1, _CPU_CHUNK_ELEMS // max(c_in, c_out)))
    return rows


def conv_transient_elements(num_points: int, c_in: int, c_out: int, device_type: str) -> int:
    """Elements one convolution call allocates beyond its output (forward) or its gradients (backward).

    The memory planner counts this (engine/families/scenesplat/memory.py); it is an upper bound, as
    an offset with fewer pairs than a chunk allocates only its own.
    """
    return chunk_rows(num_points, c_in, c_out, device_type) * (c_in + c_out)


def _chunk_rows(nmap: NeighbourMap, c_in: int, c_out: int, device: torch.device) -> int:
    """`chunk_rows` for this map, capped at its widest offset (no buffer larger than one offset's pairs)."""
    widest = max((e - s for s, e in zip(nmap.bounds, nmap.bounds[1:])), default=1)
    return max(1, min(chunk_rows(nmap.num_points, c_in, c_out, device.type), widest))


def _accumulate_pairs(
    dst: torch.Tensor,
    src: torch.Tensor,
    kernels: torch.Tensor,
    src_index: torch.Tensor,
    dst_index: torch.Tensor,
    nmap: NeighbourMap,
    rows: int,
) -> None:
    """`dst[dst_index[p]] += src[src_index[p]] @ kernels[o]` for every pair p of every offset o, `rows` at a time.

    Within one offset every site appears at most once on either side, so `index_add_` never adds
    two products into one row (deterministic on CUDA too). The two buffers are reused by every chunk.
    """
    gathered = src.new_empty(rows, src.shape[1])
    product = src.new_empty(rows, kernels.shape[2])
    for o, s, e in zip(nmap.offsets, nmap.bounds, nmap.bounds[1:]):
        for a in range(s, e, rows):
            b = min(a + rows, e)
            g = torch.index_select(src, 0, src_index[a:b], out=gathered[: b - a])
            dst.index_add_(0, dst_index[a:b], torch.mm(g, kernels[o], out=product[: b - a]))


class _SubmConvFunction(torch.autograd.Function):
    """Gather-matmul-scatter over kernel offsets in bounded chunks; saves only the input and weight.

    Neither direction materialises all pairs: the gathered rows and their products live in two
    chunk buffers (`_chunk_rows`), forward and backward alike.
    """

    @staticmethod
    def forward(ctx, feat: torch.Tensor, weight: torch.Tensor, nmap: NeighbourMap) -> torch.Tensor:
        c_out, k = weight.shape[0], weight.shape[1]
        w = weight.reshape(c_out, k * k * k, -1)  # (C_out, k^3, C_in)
        out = feat @ w[:, (k * k * k) // 2, :].t()
        if nmap.offsets:
            rows = _chunk_rows(nmap, feat.shape[1], c_out, feat.device)
            _accumulate_pairs(out, feat, w.permute(1, 2, 0), nmap.in_index, nmap.out_index, nmap, rows)
        ctx.save_for_backward(feat, weight)
        ctx.nmap = nmap
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        feat, weight = ctx.saved_tensors
        nmap = ctx.nmap
        c_out, k = weight.shape[0], weight.shape[1]
        c_in = feat.shape[1]
        w = weight.reshape(c_out, k * k * k, c_in)
        centre = (k * k * k) // 2
        grad_out = grad_out.contiguous()
        need_feat, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        rows = _chunk_rows(nmap, c_in, c_out, feat.device)
        grad_feat = grad_out @ w[:, centre, :] if need_feat else None
        grad_w = None
        if need_weight:
            # Accumulated in place in the KRSC layout: BLAS writes the strided (C_out, C_in) block of
            # each offset directly, so the weight gradient is never copied or re-laid out.
            grad_w = feat.new_zeros(c_out, k * k * k, c_in)
            grad_w[:, centre, :].addmm_(grad_out.t(), feat)
        if nmap.offsets and need_feat and not need_weight:
            _accumulate_pairs(grad_feat, grad_out, w.permute(1, 0, 2), nmap.out_index, nmap.in_index, nmap, rows)
        elif nmap.offsets and need_weight:
            # One gather of the output gradient per chunk serves both gradients.
            grad_rows = grad_out.new_empty(rows, c_out)
            in_rows = feat.new_empty(rows, c_in)
            for o, s, e in zip(nmap.offsets, nmap.bounds, nmap.bounds[1:]):
                for a in range(s, e, rows):
                    b = min(a + rows, e)
                    g = torch.index_select(grad_out, 0, nmap.out_index[a:b], out=grad_rows[: b - a])
                    x = in_rows[: b - a]
                    if need_feat:
                        grad_feat.index_add_(0, nmap.in_index[a:b], torch.mm(g, w[:, o, :], out=x))
                    torch.index_select(feat, 0, nmap.in_index[a:b], out=x)
                    grad_w[:, o, :].addmm_(g.t(), x)
        return grad_feat, None if grad_w is None else grad_w.view(weight.shape), None


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
    dtype = _autocast_dtype(feat)
    # The Function writes into preallocated buffers, so it runs with autocast off in one dtype.
    with torch.autocast(feat.device.type, enabled=False):
        out = _SubmConvFunction.apply(feat.to(dtype), weight.to(dtype), nmap)
        if bias is not None:
            out = out + bias.to(dtype)
    return out


def _autocast_dtype(feat: torch.Tensor) -> torch.dtype:
    """The dtype autocast would use for a matmul on `feat`'s device, or `feat.dtype` outside autocast."""
    device = feat.device.type
    if device not in ("cpu", "cuda"):
        return feat.dtype
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else feat.dtype
    if device == "cpu":
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else feat.dtype
    return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else feat.dtype


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
        # Only checked here; `conv` imports it again (a dict lookup) rather than keeping the module.
        if _import_spconv() is None:
            raise HardwareError(
                "sparse_conv_backend: `spconv` was requested but is not importable, got 'spconv'. "
                "Install it with lora3d's `cuda` extra (`pip install -e '.[cuda]'`: spconv-cu126) or use 'torch'."
            )

    @staticmethod
    def _check_device(feat: torch.Tensor) -> None:
        if not feat.is_cuda:
            raise HardwareError(
                "sparse_conv_backend: spconv runs only on CUDA here (its CPU kernels give wrong results "
                "with more than one thread), got a tensor on "
                f"{str(feat.device)!r}. Use sparse_conv_backend='torch' or 'auto' on CPU."
            )

    def conv(self, module: SubMConv3d, feat: torch.Tensor, level: dict) -> torch.Tensor:
        """Convolves `feat` (N, C_in) with spconv; the level's SparseConvTensor keeps the indice maps."""
        self._check_device(feat)
        spconv = _import_spconv()
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
            module.__dict__["_spconv_impl"] = impl
        # Share the parameters (re-checked every call: `.to()` may replace them) so state_dict,
        # optimizers and LoRA see one set of tensors.
        if impl.weight is not module.weight:
            impl.weight = module.weight
        if module.bias is not None and impl.bias is not module.bias:
            impl.bias = module.bias
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
