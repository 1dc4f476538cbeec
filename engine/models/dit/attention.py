"""Provides the TripoSG/MIDI attention module and its processors (standard and multi-instance).

NOTE: the checkpoints store q/k/v head-interleaved. Self-attention concatenates `to_q(x)`, `to_k(x)`,
`to_v(x)` along the features, views the result as `(B, S, heads, 3 * head_dim)` and splits the last axis
into q | k | v; cross-attention does the same with `to_k(c)`, `to_v(c)` and `2 * head_dim`, while q is a
plain per-head reshape. Every processor here goes through `_project` so that this split exists once
(VAST-AI-Research/TripoSG@fc5c409:triposg/models/attention_processor.py, reference/midi.md section 1.5).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.models.normalization import RMSNorm
from torch import nn

from engine.errors import DataError

__all__ = [
    "MultiInstanceAttnProcessor",
    "TripoSGAttention",
    "TripoSGAttnProcessor",
]

NumInstances = int | torch.Tensor | Sequence[int] | None


class TripoSGAttention(nn.Module):
    """Multi-head attention with TripoSG's parameter names (`to_q`, `to_k`, `to_v`, `to_out.0`, `norm_q`, `norm_k`).

    The maths lives in the processor (`set_processor`), as in diffusers, so that multi-instance attention
    can be switched per module without touching the weights.

    Args:
        query_dim: Width of the query tokens.
        heads: Number of heads.
        dim_head: Width of one head.
        cross_attention_dim: Width of the key/value tokens; None makes this a self-attention.
        qk_norm: Whether q and k get an RMSNorm over `dim_head` after the head split.
        eps: Epsilon of the qk RMSNorm.
        bias: Whether `to_q`, `to_k`, `to_v` have a bias (TripoSG's DiT: False).
        processor: The processor; defaults to `TripoSGAttnProcessor`.
    """

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        cross_attention_dim: int | None = None,
        qk_norm: bool = True,
        eps: float = 1e-6,
        bias: bool = False,
        processor: TripoSGAttnProcessor | MultiInstanceAttnProcessor | None = None,
    ) -> None:
        super().__init__()
        inner_dim = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.is_cross_attention = cross_attention_dim is not None
        kv_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.to_q = nn.Linear(query_dim, inner_dim, bias=bias)
        self.to_k = nn.Linear(kv_dim, inner_dim, bias=bias)
        self.to_v = nn.Linear(kv_dim, inner_dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, query_dim, bias=True), nn.Dropout(0.0)])
        self.norm_q = RMSNorm(dim_head, eps=eps) if qk_norm else None
        self.norm_k = RMSNorm(dim_head, eps=eps) if qk_norm else None
        self.processor = processor if processor is not None else TripoSGAttnProcessor()

    def set_processor(self, processor: TripoSGAttnProcessor | MultiInstanceAttnProcessor) -> None:
        """Replaces the processor (diffusers' `set_attn_processor` calls this on every module)."""
        self.processor = processor

    def get_processor(self) -> TripoSGAttnProcessor | MultiInstanceAttnProcessor:
        """Returns the current processor (diffusers' `attn_processors` reads this)."""
        return self.processor

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, S, query_dim)
        encoder_hidden_states: torch.Tensor | None = None,  # (B, M, cross_attention_dim)
        num_instances: NumInstances = None,
        num_instances_per_batch: int | None = None,
    ) -> torch.Tensor:  # (B, S, query_dim)
        return self.processor(
            self,
            hidden_states,
            encoder_hidden_states,
            num_instances=num_instances,
            num_instances_per_batch=num_instances_per_batch,
        )


def _project(
    attn: TripoSGAttention,
    hidden_states: torch.Tensor,  # (B, S, query_dim)
    encoder_hidden_states: torch.Tensor | None,  # (B, M, kv_dim)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns q (B, H, S, hd), k and v (B, H, S or M, hd) after the interleaved split and the qk-norm."""
    batch, seq, _ = hidden_states.shape
    heads = attn.heads
    query = attn.to_q(hidden_states)
    if encoder_hidden_states is None:
        if attn.is_cross_attention:
            raise ValueError("encoder_hidden_states is required by a cross-attention module")
        qkv = torch.cat([query, attn.to_k(hidden_states), attn.to_v(hidden_states)], dim=-1)
        qkv = qkv.view(batch, seq, heads, -1)
        query, key, value = qkv.chunk(3, dim=-1)  # each (B, S, H, hd)
    else:
        kv = torch.cat([attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)], dim=-1)
        kv = kv.view(batch, encoder_hidden_states.shape[1], heads, -1)
        key, value = kv.chunk(2, dim=-1)  # each (B, M, H, hd)
        query = query.view(batch, seq, heads, -1)
    query, key, value = (t.transpose(1, 2) for t in (query, key, value))
    if attn.norm_q is not None:
        # RMSNorm may promote to its fp32 weight; SDPA needs one dtype.
        query = attn.norm_q(query).to(value.dtype)
    if attn.norm_k is not None:
        key = attn.norm_k(key).to(value.dtype)
    return query, key, value


def _merge_heads(attn: TripoSGAttention, out: torch.Tensor) -> torch.Tensor:
    """(B, H, S, hd) attention output -> (B, S, query_dim) through `to_out`."""
    batch, heads, seq, dim_head = out.shape
    out = out.transpose(1, 2).reshape(batch, seq, heads * dim_head)
    out = attn.to_out[0](out)
    return attn.to_out[1](out)


def _joint_attention(
    query: torch.Tensor,  # (G*ni, H, S, hd)
    key: torch.Tensor,  # (G*ni, H, S, hd)
    value: torch.Tensor,  # (G*ni, H, S, hd)
    num_instances: int,
) -> torch.Tensor:  # (G*ni, H, S, hd)
    """Every sample attends to the keys/values of all `num_instances` samples of its group.

    MIDI repeats the group's concatenated K/V once per instance; since no mask is involved, folding the
    instances' queries into one long query sequence per group gives the same softmax rows without the
    `ni`-fold copy of K/V.
    """
    batch, heads, seq, dim_head = query.shape
    groups = batch // num_instances

    def fold(t: torch.Tensor) -> torch.Tensor:  # (G*ni, H, S, hd) -> (G, H, ni*S, hd)
        t = t.reshape(groups, num_instances, heads, t.shape[2], dim_head).transpose(1, 2)
        return t.reshape(groups, heads, num_instances * t.shape[3], dim_head)

    out = F.scaled_dot_product_attention(fold(query), fold(key), fold(value))
    out = out.reshape(groups, heads, num_instances, seq, dim_head).transpose(1, 2)
    return out.reshape(batch, heads, seq, dim_head)


class TripoSGAttnProcessor:
    """Ordinary attention: each sample attends to its own tokens (or its own condition tokens).

    Accepts and ignores the multi-instance keyword arguments so that one `attention_kwargs` dict can be
    passed to every attention module of the model.
    """

    def __call__(
        self,
        attn: TripoSGAttention,
        hidden_states: torch.Tensor,  # (B, S, query_dim)
        encoder_hidden_states: torch.Tensor | None = None,  # (B, M, kv_dim)
        num_instances: NumInstances = None,
        num_instances_per_batch: int | None = None,
    ) -> torch.Tensor:  # (B, S, query_dim)
        query, key, value = _project(attn, hidden_states, encoder_hidden_states)
        return _merge_heads(attn, F.scaled_dot_product_attention(query, key, value))


class MultiInstanceAttnProcessor:
    """MIDI's multi-instance self-attention: the instances of one scene attend to each other's tokens.

    Two batch layouts (VAST-AI-Research/MIDI-3D@b6ec9f6:midi/models/attention_processor.py#L264):

    * inference, `num_instances=N` (int): the batch is `(b ni)`, i.e. consecutive groups of N samples,
      one group per scene (with CFG: the unconditional group first, then the conditional one). Each sample
      attends to the 1 + tokens of all N samples of its group; groups never mix.
    * training, `num_instances=[n_0, n_1, ...]` (one count per scene) and `num_instances_per_batch=K`:
      the batch is scenes of K consecutive samples; in scene s the first n_s samples attend jointly and the
      remaining K - n_s padding samples attend only to themselves, so padding never reaches a real
      instance. The list repeats over the batch when it is longer (CFG doubling), as in MIDI.

    With `num_instances=None` every sample is its own scene (plain attention).
    """

    def __call__(
        self,
        attn: TripoSGAttention,
        hidden_states: torch.Tensor,  # (B, S, query_dim)
        encoder_hidden_states: torch.Tensor | None = None,
        num_instances: NumInstances = None,
        num_instances_per_batch: int | None = None,
    ) -> torch.Tensor:  # (B, S, query_dim)
        if encoder_hidden_states is not None or attn.is_cross_attention:
            raise ValueError("MultiInstanceAttnProcessor is for self-attention (attn1) only")
        query, key, value = _project(attn, hidden_states, None)
        batch = query.shape[0]
        if num_instances is None:
            out = F.scaled_dot_product_attention(query, key, value)
        elif num_instances_per_batch is None:
            count = _as_count(num_instances)
            if count < 1 or batch % count:
                raise DataError(
                    f"attention_kwargs `num_instances`: the batch of {batch} samples is not a whole number of "
                    f"scenes, got {count!r}. Lay the batch out scene by scene, num_instances samples each."
                )
            out = _joint_attention(query, key, value, count)
        else:
            out = _scene_attention(query, key, value, _as_counts(num_instances), num_instances_per_batch)
        return _merge_heads(attn, out)


def _as_count(num_instances: int | torch.Tensor | Sequence[int]) -> int:
    if isinstance(num_instances, torch.Tensor):
        if num_instances.numel() != 1:
            raise DataError(
                f"attention_kwargs `num_instances`: expected one count without `num_instances_per_batch`, "
                f"got {num_instances.tolist()!r}. Pass an int, or add `num_instances_per_batch` for the training layout."
            )
        return int(num_instances.item())
    if isinstance(num_instances, int):
        return num_instances
    raise DataError(
        f"attention_kwargs `num_instances`: expected an int without `num_instances_per_batch`, "
        f"got {num_instances!r}. Pass an int, or add `num_instances_per_batch` for the training layout."
    )


def _as_counts(num_instances: int | torch.Tensor | Sequence[int]) -> list[int]:
    if isinstance(num_instances, torch.Tensor):
        return [int(n) for n in num_instances.reshape(-1).tolist()]
    if isinstance(num_instances, int):
        return [num_instances]
    return [int(n) for n in num_instances]


def _scene_attention(
    query: torch.Tensor,  # (B, H, S, hd)
    key: torch.Tensor,
    value: torch.Tensor,
    counts: list[int],
    per_scene: int,
) -> torch.Tensor:  # (B, H, S, hd)
    """The training layout: scenes of `per_scene` samples, the first `counts[s]` of scene s attend jointly."""
    batch = query.shape[0]
    span = len(counts) * per_scene
    if not counts or span == 0 or batch % span:
        raise DataError(
            f"attention_kwargs `num_instances`: {len(counts)} scenes of `num_instances_per_batch`={per_scene} "
            f"samples do not tile a batch of {batch}, got {counts!r}. Pass one count per scene and a batch of "
            f"scenes x num_instances_per_batch samples."
        )
    bad = [n for n in counts if not 1 <= n <= per_scene]
    if bad:
        raise DataError(
            f"attention_kwargs `num_instances`: each count must be in 1..{per_scene} "
            f"(`num_instances_per_batch`), got {counts!r}. Subsample scenes to at most {per_scene} instances."
        )
    pieces = []
    start = 0
    while start < batch:
        for count in counts:
            real = slice(start, start + count)
            pieces.append(_joint_attention(query[real], key[real], value[real], count))
            if count < per_scene:
                pad = slice(start + count, start + per_scene)
                pieces.append(F.scaled_dot_product_attention(query[pad], key[pad], value[pad]))
            start += per_scene
    return torch.cat(pieces, dim=0)
