"""Provides a CPU micro-benchmark of PTv3's building blocks: submanifold conv and patch attention.

Compares, side by side in one process at one torch thread (spconv's CPU kernels are wrong with more):

- the pure-torch submanifold convolution (chunked gather-matmul-scatter, `submanifold_conv3d`),
- spconv's CPU SubMConv3d on the same sites and weight, when spconv is importable (benchmark-only
  dependency: `pip install spconv`; the product never runs it on CPU),
- the all-pairs formulation lora3d used before issue 17 (every neighbour pair gathered at once), as the
  "before" row,

for forward and forward+backward (spconv: forward only, its backward needs CUDA) with the neighbour maps built beforehand (spconv's indice pairs are
cached under its indice key the same way), timed round-robin on CPU seconds (`common.time_interleaved`),
plus each variant's peak allocation during one forward call (its output included) and during one
backward call (its gradients included), from torch's CPU allocator events via the profiler, in units of
the output's size N x C_out. The single-size table also times the neighbour-map build and the
batched SDPA patch attention against a naive per-patch loop.

    python scripts/bench/bench_ptv3_conv.py --quick
    python scripts/bench/bench_ptv3_conv.py --points 100000 --channels 64
    python scripts/bench/bench_ptv3_conv.py --sweep --json-out conv.json   # 16k/50k/100k x C 64/256/768
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

import common  # noqa: E402
import torch  # noqa: E402

from engine.models.ptv3.attention import SdpaPatchAttention, build_patch_plan  # noqa: E402
from engine.models.ptv3.sparse_conv import NeighbourMap, build_neighbour_map, submanifold_conv3d  # noqa: E402

SWEEP_POINTS = (16_000, 50_000, 100_000)
SWEEP_CHANNELS = (64, 256, 768)
GOAL_TIME_OVER_SPCONV = 1.0
GOAL_PEAK_OVER_OUTPUT = 2.0
ALL_PAIRS_MAX_BYTES = 2 * 1024**3
"""The all-pairs ("before") variant is skipped where its two (pairs, C) buffers would exceed this."""


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


class _AllPairsConv(torch.autograd.Function):
    """lora3d's convolution before issue 17: every pair's rows gathered into one (P, C) buffer at once."""

    @staticmethod
    def forward(ctx, feat: torch.Tensor, weight: torch.Tensor, nmap: NeighbourMap) -> torch.Tensor:
        c_out, k = weight.shape[0], weight.shape[1]
        w = weight.reshape(c_out, k**3, -1)
        out = feat @ w[:, k**3 // 2, :].t()
        gathered = feat.index_select(0, nmap.in_index)
        prod = gathered.new_empty(gathered.shape[0], c_out)
        for o, s, e in zip(nmap.offsets, nmap.bounds, nmap.bounds[1:]):
            torch.mm(gathered[s:e], w[:, o, :].t(), out=prod[s:e])
        out.index_add_(0, nmap.out_index, prod)
        ctx.save_for_backward(feat, weight)
        ctx.nmap = nmap
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        feat, weight = ctx.saved_tensors
        nmap = ctx.nmap
        c_out, k = weight.shape[0], weight.shape[1]
        w = weight.reshape(c_out, k**3, -1)
        centre = k**3 // 2
        grad_rows = grad_out.index_select(0, nmap.out_index)
        prod = grad_rows.new_empty(grad_rows.shape[0], feat.shape[1])
        for o, s, e in zip(nmap.offsets, nmap.bounds, nmap.bounds[1:]):
            torch.mm(grad_rows[s:e], w[:, o, :], out=prod[s:e])
        grad_feat = (grad_out @ w[:, centre, :]).index_add_(0, nmap.in_index, prod)
        del prod
        grad_w = torch.zeros_like(w)
        grad_w[:, centre, :] = grad_out.t() @ feat
        gathered = feat.index_select(0, nmap.in_index)
        for o, s, e in zip(nmap.offsets, nmap.bounds, nmap.bounds[1:]):
            grad_w[:, o, :] = grad_rows[s:e].t() @ gathered[s:e]
        return grad_feat, grad_w.reshape(weight.shape), None


def peak_allocated_bytes(fn: Callable[[], object]) -> int:
    """Peak of bytes allocated and not yet freed by torch's CPU allocator while `fn` runs (its result included)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def _spconv() -> Any | None:
    try:
        import spconv.pytorch as spconv  # noqa: PLC0415
    except ImportError:
        return None
    return spconv


class ConvCase:
    """One scene and weight, with forward and forward+backward callables for every variant."""

    def __init__(self, num_points: int, channels: int, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.grid = surface_scene(num_points, seed)
        self.n = n = len(self.grid)
        self.c = c = channels
        self.batch = torch.zeros(n, dtype=torch.long)
        self.feat = torch.randn(n, c)
        self.weight = torch.randn(c, 3, 3, 3, c) / math.sqrt(27 * c)
        self.nmap = build_neighbour_map(self.batch, self.grid, 3)
        self.feat_g = self.feat.clone().requires_grad_(True)
        self.weight_g = self.weight.clone().requires_grad_(True)
        self.upstream = torch.randn(n, c)
        self.spconv_tensor = None
        spconv = _spconv()
        if spconv is not None:
            self.sp_conv = spconv.SubMConv3d(c, c, 3, bias=False, indice_key="bench")
            with torch.no_grad():
                self.sp_conv.weight.copy_(self.weight)
            indices = torch.cat([self.batch[:, None], self.grid], 1).int()
            shape = (self.grid.max(0).values + 96).tolist()
            self.spconv_tensor = spconv.SparseConvTensor(self.feat, indices, shape, 1)
            with torch.no_grad():
                self.sp_conv(self.spconv_tensor)  # builds and caches the indice pairs, like our nmap

    @property
    def pairs_per_site(self) -> float:
        return len(self.nmap.out_index) / self.n

    def variants(self) -> dict[str, dict[str, Callable[[], object]]]:
        """{variant: {"fwd": fn, "fwd+bwd": fn}}; spconv only when importable."""

        def ours_fwd() -> object:
            with torch.no_grad():
                return submanifold_conv3d(self.feat, self.weight, None, self.nmap)

        def ours_bwd() -> object:
            self.feat_g.grad = self.weight_g.grad = None
            submanifold_conv3d(self.feat_g, self.weight_g, None, self.nmap).backward(self.upstream)
            return self.feat_g.grad

        def old_fwd() -> object:
            with torch.no_grad():
                return _AllPairsConv.apply(self.feat, self.weight, self.nmap)

        def old_bwd() -> object:
            self.feat_g.grad = self.weight_g.grad = None
            _AllPairsConv.apply(self.feat_g, self.weight_g, self.nmap).backward(self.upstream)
            return self.feat_g.grad

        out = {"torch chunked": {"fwd": ours_fwd, "fwd+bwd": ours_bwd}}
        if self.pairs_per_site * self.n * 2 * self.c * 4 <= ALL_PAIRS_MAX_BYTES:
            out["all pairs (before)"] = {"fwd": old_fwd, "fwd+bwd": old_bwd}
        if self.spconv_tensor is not None:

            def sp_fwd() -> object:
                with torch.no_grad():
                    return self.sp_conv(self.spconv_tensor.replace_feature(self.feat)).features

            # spconv's backward calls torch.cuda even for CPU tensors, so it has no fwd+bwd row.
            out["spconv CPU"] = {"fwd": sp_fwd}
        return out

    def backward_peak_bytes(self, conv: Callable[..., torch.Tensor]) -> int:
        """Peak allocation of one backward call alone (its input and weight gradients included)."""
        self.feat_g.grad = self.weight_g.grad = None
        out = conv(self.feat_g, self.weight_g, self.nmap)
        peak = peak_allocated_bytes(lambda: out.backward(self.upstream))
        self.feat_g.grad = self.weight_g.grad = None
        return peak

    def check_equal(self) -> float:
        """Largest |ours - reference| of the forward (spconv when importable, else the all-pairs version)."""
        v = self.variants()
        ref = v["spconv CPU" if "spconv CPU" in v else "all pairs (before)"]["fwd"]()
        return float((v["torch chunked"]["fwd"]() - ref).abs().max())


def measure_case(points: int, channels: int, repeat: int, warmup: int = 1) -> dict[str, Any]:
    """Times every variant round-robin and measures its peak allocation; returns a dict of results."""
    case = ConvCase(points, channels)
    variants = case.variants()
    out_bytes = case.n * case.c * 4
    result: dict[str, Any] = {"points": case.n, "channels": case.c, "pairs_per_site": case.pairs_per_site,
                              "max_abs_diff": case.check_equal(), "time_ms": {}, "peak_over_output": {}}
    for mode in ("fwd", "fwd+bwd"):
        fns = {name: fn[mode] for name, fn in variants.items() if mode in fn}
        timed = common.time_interleaved(fns, warmup=warmup, repeat=repeat)
        for name in fns:
            result["time_ms"][f"{name} {mode}"] = 1000 * timed[name]["cpu_median_s"]
            if mode == "fwd":
                result["peak_over_output"][f"{name} fwd"] = peak_allocated_bytes(fns[name]) / out_bytes
    convs = {"torch chunked": lambda f, w, m: submanifold_conv3d(f, w, None, m), "all pairs (before)": _AllPairsConv.apply}
    for name, conv in convs.items():
        if name in variants:
            result["peak_over_output"][f"{name} bwd"] = case.backward_peak_bytes(conv) / out_bytes
    return result


def _ratio_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    t, peak = res["time_ms"], res["peak_over_output"]
    tag = f"{res['points'] // 1000}k C={res['channels']}"
    rows = []
    rows.append(common.goal_row(f"{tag} fwd: torch / spconv CPU time",
                                common.ratio(t["torch chunked fwd"], t.get("spconv CPU fwd")), GOAL_TIME_OVER_SPCONV))
    for mode in ("fwd", "fwd+bwd"):
        rows.append(common.goal_row(f"{tag} {mode}: torch / all-pairs (before) time",
                                    common.ratio(t[f"torch chunked {mode}"], t.get(f"all pairs (before) {mode}")), 1.0))
    rows.append(common.goal_row(f"{tag} fwd: torch peak / (N x C_out)", peak["torch chunked fwd"],
                                GOAL_PEAK_OVER_OUTPUT))
    # The backward returns the input gradient (N x C_in) and the weight gradient (27 x C_in x C_out): its
    # transient is what it holds beyond them.
    grads = 1 + 27 * res["channels"] / res["points"]
    rows.append(common.goal_row(f"{tag} bwd: torch peak beyond its gradients / (N x C_out)",
                                peak["torch chunked bwd"] - grads, GOAL_PEAK_OVER_OUTPUT))
    rows.append({"name": f"{tag} bwd: torch peak with its gradients / (N x C_out)", "value": peak["torch chunked bwd"],
                 "goal": "report", "status": "info"})
    for key in ("all pairs (before) fwd", "spconv CPU fwd", "all pairs (before) bwd"):
        if key in peak:
            rows.append({"name": f"{tag} {key}: peak / (N x C_out)", "value": peak[key], "goal": "report",
                         "status": "info"})
    return rows


def run_sweep(points: tuple[int, ...], channels: tuple[int, ...], repeat: int) -> list[dict[str, Any]]:
    results = []
    for n in points:
        for c in channels:
            res = measure_case(n, c, repeat)
            results.append(res)
            print(f"\n{res['points']} voxels, C={c}, {res['pairs_per_site']:.1f} non-centre pairs per voxel, "
                  f"max |torch - reference| {res['max_abs_diff']:.1e}", flush=True)
            for name, ms in res["time_ms"].items():
                print(f"  {name:<34}{ms:>11.1f} ms")
            for name, value in res["peak_over_output"].items():
                print(f"  {name:<34} peak {value:6.2f} x (N x C_out)")
            common.print_rows(_ratio_rows(res))
    return results


def single_table(n_points: int, c: int, patch: int, heads: int, repeat: int) -> None:
    """The original one-size table: map builds, conv variants, attention; times relative to our conv forward."""
    case = ConvCase(n_points, c)
    variants = case.variants()
    n = case.n
    rows: list[tuple[str, float | None]] = []

    def ms(fn: Callable[[], object]) -> float:
        return 1000 * common.time_calls(fn, warmup=1, repeat=repeat)["cpu_median_s"]

    rows.append(("neighbour map k=3 (built once per level)", ms(lambda: build_neighbour_map(case.batch, case.grid, 3))))
    rows.append(("neighbour map k=5 (stem)", ms(lambda: build_neighbour_map(case.batch, case.grid, 5))))
    timed = common.time_interleaved({name: fns["fwd"] for name, fns in variants.items()}, warmup=1, repeat=repeat)
    fwd = {name: 1000 * r["cpu_median_s"] for name, r in timed.items()}
    rows.append(("subm conv k=3 torch, forward", fwd["torch chunked"]))
    rows.append(("subm conv k=3 torch, forward+backward", ms(variants["torch chunked"]["fwd+bwd"])))
    rows.append(("subm conv k=3 all pairs (before #17), forward", fwd["all pairs (before)"]))
    rows.append(("subm conv k=3 spconv CPU (1 thread), forward", fwd.get("spconv CPU")))

    plan = build_patch_plan([n], patch, torch.device("cpu"))
    qkv = torch.randn(len(plan.pad), 3 * c)
    scale = (c // heads) ** -0.5
    sdpa = SdpaPatchAttention()
    with torch.no_grad():
        rows.append((f"attention naive per-patch loop, K={patch}",
                     ms(lambda: naive_patch_attention(qkv, patch, heads, scale))))
        rows.append((f"attention SDPA batched patches, K={patch}", ms(lambda: sdpa.attend(qkv, plan, heads, scale, 0.0))))

    peak = peak_allocated_bytes(variants["torch chunked"]["fwd"]) / (n * c * 4)
    base = rows[2][1]
    print(f"PTv3 blocks on CPU: {n} voxels, C={c}, {case.pairs_per_site:.1f} non-centre neighbours per voxel, "
          f"{torch.get_num_threads()} threads; torch conv forward peak {peak:.2f} x (N x C_out)")
    print(f"{'operation':<52}{'ms':>10}{'x conv fwd':>12}")
    for name, value in rows:
        if value is None:
            print(f"{name:<52}{'skipped: spconv is not importable':>22}")
        else:
            print(f"{name:<52}{value:>10.2f}{value / base:>12.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (seconds)")
    parser.add_argument("--points", type=int, default=None, help="voxels in the scene (default 100000; quick 10000)")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--patch", type=int, default=128, help="attention patch size K")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--sweep", action="store_true",
                        help=f"conv only, points {SWEEP_POINTS} x channels {SWEEP_CHANNELS} (or --points/--channels)")
    parser.add_argument("--sweep-channels", type=str, default=None, help="comma list, e.g. 64,256")
    parser.add_argument("--repeat", type=int, default=None, help="timed calls per variant (default 5; quick 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for every variant (default 1: spconv's CPU kernels need 1)")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeat = args.repeat or (3 if args.quick else 5)
    machine = common.describe_machine()
    print("machine:", common.format_machine(machine))
    if args.sweep:
        points = (args.points,) if args.points else SWEEP_POINTS
        channels = tuple(int(x) for x in args.sweep_channels.split(",")) if args.sweep_channels else SWEEP_CHANNELS
        results = run_sweep(points, channels, repeat)
        rows = [row for res in results for row in _ratio_rows(res)]
        print("\nsummary")
        common.print_rows(rows)
        common.write_json(args.json_out, {"machine": machine, "results": results, "rows": rows})
        return
    n = args.points or (10_000 if args.quick else 100_000)
    single_table(n, args.channels, args.patch, args.heads, repeat)


if __name__ == "__main__":
    main()
