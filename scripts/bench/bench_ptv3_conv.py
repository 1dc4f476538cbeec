"""Provides a CPU micro-benchmark of PTv3's building blocks: submanifold conv and patch attention.

Compares the pure-torch submanifold convolution (neighbour-map build, forward, forward+backward),
spconv's CPU SubMConv3d when importable (timed single-threaded: its CPU kernels are wrong with more
threads), a naive per-patch attention loop and the batched SDPA patch attention PTv3 uses.

Usage: python scripts/bench/bench_ptv3_conv.py [--quick] [--points N] [--channels C] [--patch K]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch

from engine.models.ptv3.attention import SdpaPatchAttention, build_patch_plan
from engine.models.ptv3.sparse_conv import build_neighbour_map, submanifold_conv3d


def surface_scene(num_points: int, seed: int = 0) -> torch.Tensor:
    """Unique voxels on a room-like surface (floor, two walls, a sphere), like a splat scene at 2 cm."""
    gen = torch.Generator().manual_seed(seed)
    side = int(math.sqrt(num_points / 2.5)) + 4
    pts = []
    u = torch.rand(num_points * 2, 2, generator=gen) * side
    pts.append(torch.stack([u[:, 0], u[:, 1], torch.zeros(len(u))], 1))  # floor
    pts.append(torch.stack([u[:, 0], torch.zeros(len(u)), u[:, 1] * 0.6], 1))  # wall
    pts.append(torch.stack([torch.zeros(len(u)), u[:, 0], u[:, 1] * 0.6], 1))  # wall
    d = torch.randn(num_points, 3, generator=gen)
    pts.append(d / d.norm(dim=1, keepdim=True) * side / 5 + side / 2)  # object
    grid = torch.unique(torch.cat(pts).floor().long().clamp(min=0), dim=0)
    return grid[torch.randperm(len(grid), generator=gen)[:num_points]]


def timeit(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of `fn` in milliseconds after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return sorted(times)[len(times) // 2]


def naive_patch_attention(qkv: torch.Tensor, k: int, heads: int, scale: float) -> torch.Tensor:
    """One softmax(q k^T) v per patch of K tokens, in a Python loop (the reference formulation)."""
    t, c3 = qkv.shape
    c = c3 // 3
    out = torch.empty(t, c)
    for s in range(0, t, k):
        q, kk, v = qkv[s : s + k].view(-1, 3, heads, c // heads).permute(1, 2, 0, 3)
        w = torch.softmax(q @ kk.transpose(1, 2) * scale, dim=-1)
        out[s : s + k] = (w @ v).transpose(0, 1).reshape(-1, c)
    return out


def spconv_row(grid: torch.Tensor, feat: torch.Tensor, weight: torch.Tensor, repeat: int) -> float | None:
    try:
        import spconv.pytorch as spconv  # noqa: PLC0415
    except ImportError:
        return None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        conv = spconv.SubMConv3d(feat.shape[1], weight.shape[0], 3, bias=False, indice_key="bench").train()
        with torch.no_grad():
            conv.weight.copy_(weight)
        indices = torch.cat([torch.zeros(len(grid), 1, dtype=torch.long), grid], 1).int()
        shape = (grid.max(0).values + 96).tolist()

        def run() -> object:
            return conv(spconv.SparseConvTensor(feat, indices, shape, 1)).features

        with torch.no_grad():
            return timeit(run, repeat)
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (seconds)")
    parser.add_argument("--points", type=int, default=None, help="voxels in the scene (default 100000; quick 10000)")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--patch", type=int, default=128, help="attention patch size K")
    parser.add_argument("--heads", type=int, default=4)
    args = parser.parse_args()
    n = args.points or (10_000 if args.quick else 100_000)
    repeat = 3 if args.quick else 5
    c = args.channels
    torch.manual_seed(0)

    grid = surface_scene(n)
    n = len(grid)
    batch = torch.zeros(n, dtype=torch.long)
    feat = torch.randn(n, c)
    weight = torch.randn(c, 3, 3, 3, c) / math.sqrt(27 * c)
    nmap = build_neighbour_map(batch, grid, 3)
    feat_grad = feat.clone().requires_grad_(True)
    weight_grad = weight.clone().requires_grad_(True)

    def conv_fwd_bwd() -> None:
        submanifold_conv3d(feat_grad, weight_grad, None, nmap).sum().backward()

    rows: list[tuple[str, float | None]] = []
    rows.append(("neighbour map k=3 (built once per level)", timeit(lambda: build_neighbour_map(batch, grid, 3), repeat)))
    rows.append(("neighbour map k=5 (stem)", timeit(lambda: build_neighbour_map(batch, grid, 5), repeat)))
    with torch.no_grad():
        rows.append(("subm conv k=3 torch, forward", timeit(lambda: submanifold_conv3d(feat, weight, None, nmap), repeat)))
    rows.append(("subm conv k=3 torch, forward+backward", timeit(conv_fwd_bwd, repeat)))
    rows.append(("subm conv k=3 spconv CPU (1 thread), forward", spconv_row(grid, feat, weight, repeat)))

    plan = build_patch_plan([n], args.patch, torch.device("cpu"))
    qkv = torch.randn(len(plan.pad), 3 * c)
    scale = (c // args.heads) ** -0.5
    sdpa = SdpaPatchAttention()
    with torch.no_grad():
        rows.append((f"attention naive per-patch loop, K={args.patch}",
                     timeit(lambda: naive_patch_attention(qkv, args.patch, args.heads, scale), repeat)))
        rows.append((f"attention SDPA batched patches, K={args.patch}",
                     timeit(lambda: sdpa.attend(qkv, plan, args.heads, scale, 0.0), repeat)))

    base = rows[2][1]
    print(f"PTv3 blocks on CPU: {n} voxels, C={c}, {len(nmap.out_index) / n:.1f} non-centre neighbours per voxel, "
          f"{torch.get_num_threads()} threads")
    print(f"{'operation':<52}{'ms':>10}{'x conv fwd':>12}")
    for name, ms in rows:
        if ms is None:
            print(f"{name:<52}{'skipped: spconv is not importable':>22}")
        else:
            print(f"{name:<52}{ms:>10.2f}{ms / base:>12.2f}")


if __name__ == "__main__":
    main()
