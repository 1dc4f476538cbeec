"""Provides the fidelity section: golden vectors, the pure-torch sparse conv and PTv3 attention on the device.

1. Every golden set (goldens.CASES) in fp32 at the CPU tests' tolerance, with TF32 off, then under bf16
   autocast at `BF16_REL_TOL` (relative L2 error of each float output: bf16 keeps 8 bits of mantissa,
   so a deep network's output moves by about 1e-2 relative; NaN never passes).
2. The pure-torch submanifold convolution on the device in fp32 against a float64 CPU reference,
   forward and both gradients, at `CONV_REL_TOL`.
3. PTv3 patch attention through SDPA on equal patches (every scene a multiple of the patch size, the
   layout SceneSplat's flash semantics produce): which kernel SDPA picks by default for fp32, bf16 and
   fp16 inputs (read from the profiler's operator names), and the flash kernel forced, against a float32
   math-kernel reference at `HALF_REL_TOL`.
4. flash-attn the package, when it imports, against SDPA.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
from collections.abc import Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from engine.models.ptv3.attention import FlashVarlenAttention, SdpaPatchAttention, build_patch_plan
from engine.models.ptv3.sparse_conv import SubMConv3d, TorchSparseConvBackend
from gpucheck.goldens import CASES
from gpucheck.record import Context, Section, close, errors

BF16_REL_TOL = 6e-2
"""Relative L2 error allowed for a golden output under bf16 autocast. bf16 rounds to 2^-9 relative; through
these networks the CPU's bf16 autocast moved the outputs by 0.7e-2 (DiT) to 3.7e-2 (the VAE's SDF, whose
values straddle zero); a wrong kernel or a dtype slip moves them by O(1) or to NaN."""
CONV_REL_TOL = 1e-5
"""Relative L2 error of the fp32 sparse conv (forward, input gradient, weight gradient) vs float64."""
HALF_REL_TOL = 1e-2
"""Relative L2 error of one attention call with half-precision inputs vs float32."""


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """TF32 off for matmuls and cuDNN while the fp32 checks run (restored after)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def run(ctx: Context, section: Section) -> None:
    golden = ctx.repo / "tests" / "golden"
    for case in CASES:
        with section.guard(f"golden fp32: {case.name}"), exact_fp32():
            judge_golden(section, f"golden fp32: {case.name}", case.run(golden, ctx.device, "torch"),
                         case.atol, case.rtol)
        with section.guard(f"golden bf16 autocast: {case.name}"), \
                torch.autocast(ctx.device, dtype=torch.bfloat16):
            judge_golden(section, f"golden bf16 autocast: {case.name}", case.run(golden, ctx.device, "torch"),
                         None, None)
    with section.guard("sparse conv (pure torch) fp32 vs float64 CPU"), exact_fp32():
        check_conv(ctx, section)
    with section.guard("SDPA patch attention"):
        check_sdpa(ctx, section)
    with section.guard("flash-attn varlen vs SDPA"):
        check_flash_attn(ctx, section)


def judge_golden(section: Section, name: str, outputs: dict, atol: float | None, rtol: float | None) -> None:
    """fp32 (`atol` given): every output within the CPU tolerance; bf16 (`atol` None): within BF16_REL_TOL."""
    failed, values = [], {}
    for label, (got, ref) in outputs.items():
        if label.endswith("[int]"):
            same = torch.equal(got.detach().cpu().to(ref.dtype), ref)
            values[label] = {"exact": same}
            if not same:
                failed.append(label)
            continue
        if atol is None:
            err = errors(got.float(), ref)
            ok = err["finite"] and err["rel_l2"] <= BF16_REL_TOL
        else:
            ok, err = close(got, ref, atol, rtol or 0.0)
        values[label] = err
        if not ok:
            failed.append(label)
    worst = max((v.get("rel_l2", 0.0) for v in values.values() if isinstance(v, dict)), default=0.0)
    tol = f"rel_l2 <= {BF16_REL_TOL:g}" if atol is None else f"|d| <= {atol:g} + {rtol or 0:g}|ref|"
    detail = f"worst rel_l2 {worst:.2e} ({tol})" + (f"; out of tolerance: {', '.join(failed)}" if failed else "")
    section.judge(name, not failed, detail, tolerance=tol, outputs=values)


# ------------------------------------------------------------------------------ sparse convolution
def random_sites(scenes: int, points: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch (N,), grid_coord (N, 3)): `points` unique voxels per scene at ~30% occupancy of a cube."""
    g = torch.Generator().manual_seed(seed)
    side = math.ceil((points / 0.3) ** (1 / 3))
    batch, coords = [], []
    for b in range(scenes):
        cells = torch.randperm(side**3, generator=g)[:points].sort().values
        coords.append(torch.stack([cells // (side * side), (cells // side) % side, cells % side], dim=1))
        batch.append(torch.full((points,), b, dtype=torch.long))
    return torch.cat(batch), torch.cat(coords)


def conv_sizes(ctx: Context) -> tuple[int, int, int]:
    """(scenes, points per scene, channels) of the conv checks."""
    return (2, 400, 8) if ctx.dry_run else (2, 60_000, 48)


def conv_pass(module: torch.nn.Module, feat: torch.Tensor, level: dict, grad_out: torch.Tensor):
    """(output, input gradient, weight gradient) of one forward and backward."""
    feat = feat.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    out = module(feat, level)
    out.backward(grad_out)
    return out.detach(), feat.grad.detach(), module.weight.grad.detach()


def check_conv(ctx: Context, section: Section) -> None:
    scenes, points, channels = conv_sizes(ctx)
    batch, grid = random_sites(scenes, points, seed=1)
    g = torch.Generator().manual_seed(2)
    feat = torch.randn(batch.numel(), channels, generator=g)
    grad_out = torch.randn(batch.numel(), channels, generator=g)
    torch.manual_seed(3)
    module = SubMConv3d(channels, channels, 3, backend=TorchSparseConvBackend())
    ref = conv_pass(module.double(), feat.double(), {"batch": batch, "grid_coord": grid}, grad_out.double())
    module = module.float().to(ctx.device)
    level = {"batch": batch.to(ctx.device), "grid_coord": grid.to(ctx.device)}
    got = conv_pass(module, feat.to(ctx.device), level, grad_out.to(ctx.device))
    values = {name: errors(a, b) for name, a, b in zip(("out", "grad_feat", "grad_weight"), got, ref)}
    worst = max(v["rel_l2"] for v in values.values())
    ok = all(v["finite"] and v["rel_l2"] <= CONV_REL_TOL for v in values.values())
    section.judge(f"sparse conv (pure torch) {ctx.device} fp32 vs float64 CPU", ok,
                  f"{scenes}x{points} sites, C {channels}, k 3: worst rel_l2 {worst:.2e} (<= {CONV_REL_TOL:g})",
                  **values)


# ------------------------------------------------------------------------------ attention
def sdpa_ops(fn) -> list[str]:
    """The attention operators one call of `fn` ran, as the profiler names them (which kernel SDPA chose)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = {e.key for e in prof.key_averages()}
    return sorted(n for n in names if "attention" in n and n != "aten::scaled_dot_product_attention")


def attention_inputs(ctx: Context) -> tuple[torch.Tensor, object, int, float]:
    """(qkv (T, 3C) fp32 on the device, plan, heads, scale) for equal patches of SceneSplat's K."""
    k, patches, channels, heads = (64, 8, 32, 2) if ctx.dry_run else (1024, 64, 64, 4)
    plan = build_patch_plan([k * patches // 2, k * patches // 2], k, torch.device(ctx.device))
    g = torch.Generator().manual_seed(4)
    qkv = torch.randn(k * patches, 3 * channels, generator=g).to(ctx.device)
    return qkv, plan, heads, (channels // heads) ** -0.5


def check_sdpa(ctx: Context, section: Section) -> None:
    attn = SdpaPatchAttention()
    qkv, plan, heads, scale = attention_inputs(ctx)
    assert not plan.short_spans  # equal patches: the view path SceneSplat's flash semantics run

    def call(x: torch.Tensor) -> torch.Tensor:
        return attn.attend(x, plan, heads, scale, 0.0)

    with sdpa_kernel(SDPBackend.MATH), exact_fp32():
        reference = call(qkv)
    picks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        x = qkv.to(dtype)
        try:
            picks[name] = sdpa_ops(lambda x=x: call(x))
        except RuntimeError as exc:  # e.g. a dtype this device's SDPA does not take
            picks[name] = [f"error: {exc}"[:120]]
    section.add("SDPA kernel picked by default (equal patches)", "info",
                "; ".join(f"{k}: {', '.join(v) or '?'}" for k, v in picks.items())
                + f" (K {plan.patch_size}, head dim {qkv.shape[1] // 3 // heads})", **picks)
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with section.guard(f"SDPA flash kernel forced, {name}"):
            out, ops = _forced_flash(call, qkv.to(dtype))
            err = errors(out.float(), reference)
            section.judge(f"SDPA flash kernel forced, {name}", err["finite"] and err["rel_l2"] <= HALF_REL_TOL,
                          f"{', '.join(ops)}: rel_l2 {err['rel_l2']:.2e} vs fp32 math (<= {HALF_REL_TOL:g})",
                          ops=ops, **err)


def _forced_flash(call, x: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """`call(x)` with SDPA restricted to its flash kernel: (output, the attention operators that ran)."""
    held = {}

    def forced() -> None:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            held["out"] = call(x)

    ops = sdpa_ops(forced)
    return held["out"], ops


def check_flash_attn(ctx: Context, section: Section) -> None:
    name = "flash-attn varlen vs SDPA"
    if ctx.device != "cuda":
        section.add(name, "skip", "flash-attn runs on CUDA only")
        return
    if importlib.util.find_spec("flash_attn") is None:
        section.add(name, "skip", "flash-attn is not importable (not in the `cuda` extra: SDPA already runs "
                                  "flash kernels for half-precision inputs, see the SDPA rows)")
        return
    qkv, plan, heads, scale = attention_inputs(ctx)
    with exact_fp32():
        reference = SdpaPatchAttention().attend(qkv, plan, heads, scale, 0.0)
    out = FlashVarlenAttention(torch.float16).attend(qkv, plan, heads, scale, 0.0)
    err = errors(out, reference)
    section.judge(name, err["finite"] and err["rel_l2"] <= HALF_REL_TOL,
                  f"fp16 varlen vs fp32 SDPA: rel_l2 {err['rel_l2']:.2e} (<= {HALF_REL_TOL:g})", **err)
