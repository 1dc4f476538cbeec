"""Provides the spconv section: spconv's SubMConv3d against the pure-torch convolution, and the goldens through it.

spconv is optional (the `cuda` extra) and runs only on CUDA in lora3d. When it imports:
1. one submanifold convolution, forward and both gradients, spconv vs pure torch on the same sites and
   weight, fp32 with TF32 off, at `SPCONV_REL_TOL`;
2. every golden set with sparse convolutions, rerun with `sparse_conv_backend="spconv"`, in fp32 at the CPU
   tolerance;
3. the time of one forward+backward of each (CUDA events, median of `_REPEAT`), as information.

This section imports only torch, PEFT, transformers and spconv, so it can run alone with only spconv's
wheels carried (docs/gpu.md: the spconv wheels and the others do not fit one device call together).
"""

from __future__ import annotations

import statistics
import time

import torch

from engine.models.ptv3.sparse_conv import SpconvSparseConvBackend, SubMConv3d, TorchSparseConvBackend
from gpucheck.fidelity import conv_pass, conv_sizes, exact_fp32, judge_golden, random_sites
from gpucheck.goldens import CASES
from gpucheck.record import Context, Section, errors

SPCONV_REL_TOL = 1e-4
"""spconv vs pure torch, fp32: both sum the same 27 products per site in another order (~1e-7 relative);
1e-4 leaves room for spconv's own GEMM tiling, and still catches a wrong offset or layout (O(1))."""
_REPEAT = 5


def _spconv_import_error() -> str | None:
    try:
        import spconv.pytorch  # noqa: F401  (lazy: optional; its absence is the finding)
    except Exception as exc:  # not installed, or built for another CUDA: either way it is not used
        return f"{type(exc).__name__}: {exc}"
    return None


def run(ctx: Context, section: Section) -> None:
    if ctx.device != "cuda":
        section.add("spconv", "skip", "lora3d runs spconv only on CUDA (its CPU kernels are wrong with >1 thread)")
        return
    problem = _spconv_import_error()
    if problem:
        section.add("spconv", "skip", f"spconv does not import ({problem[:200]}); the pure-torch conv is used")
        return
    import spconv  # lazy: optional, imported above only when it works

    section.facts["spconv"] = getattr(spconv, "__version__", "?")
    with section.guard("spconv SubMConv3d vs pure torch"), exact_fp32():
        _check_conv(ctx, section)
    golden = ctx.repo / "tests" / "golden"
    for case in CASES:
        if case.sparse_conv:
            with section.guard(f"golden fp32 through spconv: {case.name}"), exact_fp32():
                judge_golden(section, f"golden fp32 through spconv: {case.name}",
                             case.run(golden, "cuda", "spconv"), case.atol, case.rtol)


def _time(fn) -> float:
    """Median seconds of `fn` over `_REPEAT` calls after one warm-up, read with CUDA events."""
    fn()
    times = []
    for _ in range(_REPEAT):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def _check_conv(ctx: Context, section: Section) -> None:
    scenes, points, channels = conv_sizes(ctx)
    batch, grid = random_sites(scenes, points, seed=1)
    g = torch.Generator().manual_seed(2)
    feat = torch.randn(batch.numel(), channels, generator=g).cuda()
    grad_out = torch.randn(batch.numel(), channels, generator=g).cuda()
    torch.manual_seed(3)
    module = SubMConv3d(channels, channels, 3, indice_key="check").cuda()
    levels = {}
    results = {}
    for name, backend in (("torch", TorchSparseConvBackend()), ("spconv", SpconvSparseConvBackend())):
        module.backend = backend
        levels[name] = {"batch": batch.cuda(), "grid_coord": grid.cuda()}
        t0 = time.perf_counter()
        results[name] = conv_pass(module, feat, levels[name], grad_out)  # builds the neighbour maps
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        step = _time(lambda n=name: conv_pass(module, feat, levels[n], grad_out))
        section.add(f"conv time, {name}", "info", f"forward+backward {1e3 * step:.2f} ms (first call with the "
                    f"neighbour maps {1e3 * first:.1f} ms)", seconds=step, first_call_s=first)
    values = {k: errors(a, b) for k, a, b in zip(("out", "grad_feat", "grad_weight"), results["spconv"], results["torch"])}
    worst = max(v["rel_l2"] for v in values.values())
    ok = all(v["finite"] and v["rel_l2"] <= SPCONV_REL_TOL for v in values.values())
    section.judge("spconv SubMConv3d vs pure torch", ok,
                  f"{scenes}x{points} sites, C {channels}: worst rel_l2 {worst:.2e} (<= {SPCONV_REL_TOL:g})", **values)
