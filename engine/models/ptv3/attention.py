"""Provides PTv3's serialized patch attention, its patch plans and the SDPA / flash-attn backends.

Points are gathered in a serialization order and cut into patches of K tokens per scene. A scene
with n > K points is padded to ceil(n/K)*K by copying the tokens K positions earlier into the pad
slots of its last patch (no mask); a scene with n <= K is one sequence of n tokens. Two semantics
exist in Pointcept (point_transformer_v3m1_base.py, `SerializedAttention`):

- `enable_flash=True`: K = patch_size for every scene (what SceneSplat checkpoints run). Computed
  with flash-attn varlen on CUDA when importable, else with PyTorch SDPA (same numbers up to the
  fp16 cast flash needs).
- `enable_flash=False`: K = min(min points per scene at the level, patch_size) for the whole batch.

NOTE: like Pointcept, the plan is built by the first attention module that visits a level and is
cached on the level, so a decoder stage reuses its encoder stage's plan (see model.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import HardwareError

ATTENTION_BACKENDS = ("auto", "sdpa", "flash")


def _import_flash_attn() -> Any | None:
    try:
        import flash_attn  # noqa: PLC0415  # lazy: optional accelerator, imported only on CUDA
    except ImportError:
        return None
    return flash_attn


@dataclass(frozen=True)
class PatchPlan:
    """Padding of one level into attention sequences.

    Attributes:
        patch_size: K the plan was built with.
        pad: (T,) int64 positions into the serialized order, T = padded token count.
        unpad: (N,) int64 padded position of each serialized position.
        cu_seqlens: (S+1,) int32 sequence boundaries in the padded token array.
        full_starts: (P,) int64 starts of the sequences of exactly K tokens.
        short_spans: (start, length) of the sequences shorter than K (scenes with n < K).
    """

    patch_size: int
    pad: torch.Tensor
    unpad: torch.Tensor
    cu_seqlens: torch.Tensor
    full_starts: torch.Tensor
    short_spans: tuple[tuple[int, int], ...]


def build_patch_plan(counts: list[int], patch_size: int, device: torch.device) -> PatchPlan:
    """Builds Pointcept's copy-padding for scenes of `counts` points with patch size K.

    Args:
        counts: points per scene, in scene order.
        patch_size: K.
        device: where the index tensors live.
    """
    k = patch_size
    pad_parts, unpad_parts, seq_starts, short = [], [], [], []
    start, start_pad = 0, 0
    for n in counts:
        n_pad = -(-n // k) * k if n > k else n
        idx = torch.arange(n_pad, device=device)
        if n_pad != n:
            rem = n % k
            # pad slots [n_pad-K+rem, n_pad) copy positions [n_pad-2K+rem, n_pad-K)
            idx[n_pad - k + rem :] = idx[n_pad - 2 * k + rem : n_pad - k]
        pad_parts.append(idx + start)
        unpad_parts.append(torch.arange(n, device=device) + start_pad)
        if n >= k:
            seq_starts.extend(range(start_pad, start_pad + n_pad, k))
        else:
            short.append((start_pad, n))
        start += n
        start_pad += n_pad
    boundaries = sorted(seq_starts + [s for s, _ in short]) + [start_pad]
    return PatchPlan(
        patch_size=k,
        pad=torch.cat(pad_parts),
        unpad=torch.cat(unpad_parts),
        cu_seqlens=torch.tensor(boundaries, dtype=torch.int32, device=device),
        full_starts=torch.tensor(seq_starts, dtype=torch.long, device=device),
        short_spans=tuple(short),
    )


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, bias: torch.Tensor | None,
          dropout_p: float, upcast: bool) -> torch.Tensor:
    """Softmax attention over (..., H, L, D); upcast computes in float32 and casts back."""
    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
        bias = bias.float() if bias is not None else None
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)
    return out.to(dtype)


class SdpaPatchAttention:
    """Patch attention with `torch.nn.functional.scaled_dot_product_attention`."""

    name = "sdpa"

    def attend(self, qkv: torch.Tensor, plan: PatchPlan, num_heads: int, scale: float,
               dropout_p: float, bias: torch.Tensor | None = None, upcast: bool = False) -> torch.Tensor:
        """Attends within every sequence of the plan.

        Args:
            qkv: (T, 3C) padded tokens in serialized order; columns [Q | K | V], heads contiguous.
            plan: the level's patch plan.
            num_heads: H.
            scale: softmax scale.
            dropout_p: attention dropout (0 in eval).
            bias: (P, H, K, K) additive bias for the full patches (relative position encoding).
            upcast: compute in float32.

        Returns:
            (T, C) attention output per padded token.
        """
        t, c3 = qkv.shape
        c = c3 // 3
        h, d, k = num_heads, c // num_heads, plan.patch_size
        if not plan.short_spans:
            # Every sequence is a full patch laid out contiguously: attend on a view, no gathers.
            q, kk, v = qkv.view(-1, k, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # (P, H, K, D)
            o = _sdpa(q, kk, v, scale, bias, dropout_p, upcast)
            return o.permute(0, 2, 1, 3).reshape(t, c)
        qkv = qkv.reshape(t, 3, h, d)
        out = qkv.new_empty(t, h, d)
        if plan.full_starts.numel():
            rows = (plan.full_starts[:, None] + torch.arange(k, device=qkv.device)).reshape(-1)
            q, kk, v = qkv.index_select(0, rows).view(-1, k, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
            o = _sdpa(q, kk, v, scale, bias, dropout_p, upcast)
            out[rows] = o.permute(0, 2, 1, 3).reshape(-1, h, d)
        for start, length in plan.short_spans:
            q, kk, v = qkv[start : start + length].permute(1, 2, 0, 3).unbind(0)  # (H, L, D)
            out[start : start + length] = _sdpa(q, kk, v, scale, None, dropout_p, upcast).transpose(0, 1)
        return out.reshape(t, c)


class FlashVarlenAttention:
    """flash-attn's varlen kernel on CUDA (qkv cast to `dtype`: fp16 as SceneSplat does); SDPA elsewhere."""

    name = "flash"

    def __init__(self, dtype: torch.dtype = torch.float16) -> None:
        self.dtype = dtype  # PT-v3m2 (Sonata/Concerto) casts to bf16
        self._flash = _import_flash_attn()
        if self._flash is None:
            raise HardwareError(
                "attention_backend: flash-attn was requested but is not importable, got 'flash'. "
                "Install flash-attn on a CUDA machine or use 'sdpa' (same numbers)."
            )
        self._sdpa = SdpaPatchAttention()

    def attend(self, qkv: torch.Tensor, plan: PatchPlan, num_heads: int, scale: float,
               dropout_p: float, bias: torch.Tensor | None = None, upcast: bool = False) -> torch.Tensor:
        """Same contract as `SdpaPatchAttention.attend`."""
        if not qkv.is_cuda or bias is not None or upcast:
            return self._sdpa.attend(qkv, plan, num_heads, scale, dropout_p, bias, upcast)
        t, c3 = qkv.shape
        c = c3 // 3
        out = self._flash.flash_attn_varlen_qkvpacked_func(
            qkv.to(self.dtype).reshape(t, 3, num_heads, c // num_heads),
            plan.cu_seqlens,
            max_seqlen=plan.patch_size,
            dropout_p=dropout_p,
            softmax_scale=scale,
        )
        return out.reshape(t, c).to(qkv.dtype)


def build_attention_backend(
    name: str, enable_flash: bool, flash_dtype: torch.dtype = torch.float16
) -> SdpaPatchAttention | FlashVarlenAttention:
    """Chooses the attention backend once.

    'auto' picks flash-attn when `enable_flash` and flash-attn is importable, else SDPA. `flash_dtype`
    is what flash-attn computes in.

    Raises:
        HardwareError: when 'flash' is requested and flash-attn is not importable.
    """
    if name == "sdpa":
        return SdpaPatchAttention()
    if name == "flash":
        return FlashVarlenAttention(flash_dtype)
    if name == "auto":
        if enable_flash and _import_flash_attn() is not None:
            return FlashVarlenAttention(flash_dtype)
        return SdpaPatchAttention()
    raise ValueError(f"attention_backend: unknown backend, got {name!r}. Use one of {ATTENTION_BACKENDS}.")


class RelativePositionEncoding(nn.Module):
    """PTv3's optional RPE: per-axis learned tables over clamped grid offsets, summed (key `rpe_table`)."""

    def __init__(self, patch_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.pos_bnd = int((4 * patch_size) ** (1 / 3) * 2)
        self.rpe_num = 2 * self.pos_bnd + 1
        self.rpe_table = nn.Parameter(torch.zeros(3 * self.rpe_num, num_heads))
        nn.init.trunc_normal_(self.rpe_table, std=0.02)

    def forward(self, rel_pos: torch.Tensor) -> torch.Tensor:
        """Maps (P, K, K, 3) integer offsets to a (P, H, K, K) attention bias."""
        idx = rel_pos.clamp(-self.pos_bnd, self.pos_bnd) + self.pos_bnd
        idx = idx + torch.arange(3, device=rel_pos.device) * self.rpe_num
        out = self.rpe_table.index_select(0, idx.reshape(-1)).view(*idx.shape, -1).sum(3)
        return out.permute(0, 3, 1, 2)


class SerializedAttention(nn.Module):
    """Multi-head attention within serialized patches (module keys `qkv`, `proj`, optional `rpe`).

    Args:
        channels: C.
        num_heads: H.
        patch_size: K (the maximum K without flash semantics).
        qkv_bias: bias of the qkv projection.
        qk_scale: softmax scale; defaults to (C/H)^-0.5.
        attn_drop: attention dropout.
        proj_drop: dropout after `proj`.
        order_index: which serialization order this module reads.
        enable_rpe: add relative position encoding (needs enable_flash=False).
        enable_flash: flash semantics (fixed K); see the module docstring.
        upcast_attention: compute attention in float32.
        upcast_softmax: compute the softmax in float32.
        backend: the attention backend shared by the model.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        patch_size: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        order_index: int = 0,
        enable_rpe: bool = False,
        enable_flash: bool = True,
        upcast_attention: bool = True,
        upcast_softmax: bool = True,
        backend: Any = None,
    ) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"num_heads: must divide channels {channels}, got {num_heads!r}.")
        self.channels = channels
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.scale = qk_scale or (channels // num_heads) ** -0.5
        self.order_index = order_index
        self.enable_rpe = enable_rpe
        self.enable_flash = enable_flash
        self.upcast = bool(upcast_attention or upcast_softmax)
        self.attn_drop = attn_drop
        self.backend = backend if backend is not None else SdpaPatchAttention()
        self.qkv = nn.Linear(channels, channels * 3, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rpe = RelativePositionEncoding(patch_size, num_heads) if enable_rpe else None

    def patch_plan(self, level: dict) -> PatchPlan:
        """Returns the level's cached plan, building it with this module's K on first use."""
        plan = level.get("_patch_plan")
        if plan is None:
            counts = torch.diff(level["offset"], prepend=level["offset"].new_zeros(1)).tolist()
            k = self.patch_size if self.enable_flash else min(min(counts), self.patch_size)
            plan = build_patch_plan(counts, k, level["feat"].device)
            level["_patch_plan"] = plan
        return plan

    def forward(self, feat: torch.Tensor, level: dict) -> torch.Tensor:
        """Attends over features (N, C) of `level` in its order `order_index`; returns (N, C)."""
        plan = self.patch_plan(level)
        order = level["serialized_order"][self.order_index][plan.pad]  # (T,) input rows per padded token
        inverse = plan.unpad[level["serialized_inverse"][self.order_index]]  # (N,) padded slot per row
        qkv = self.qkv(feat).index_select(0, order)  # (T, 3C)
        bias = None
        if self.rpe is not None:
            k = plan.patch_size
            grid = level["grid_coord"][order].reshape(-1, k, 3)
            bias = self.rpe(grid.unsqueeze(2) - grid.unsqueeze(1)).to(qkv.dtype)
        dropout_p = self.attn_drop if self.training else 0.0
        out = self.backend.attend(qkv, plan, self.num_heads, self.scale, dropout_p, bias, self.upcast)
        out = out.index_select(0, inverse)
        return self.proj_drop(self.proj(out))
