"""Provides TripoSGDiTModel, the TripoSG / MIDI-3D latent-set diffusion transformer (diffusers layout).

The same class loads TripoSG's `transformer/` folder (one DINOv2 cross-attention) and MIDI-3D's (CLIP
cross-attention `attn2` plus a parallel DINOv2 cross-attention `attn2_2`). Parameter names equal the
originals', so hub checkpoints load with `strict=True` and PEFT targets `to_q/to_k/to_v/to_out.0` by name.
Maths: VAST-AI-Research/TripoSG@fc5c409:triposg/models/transformers/triposg_transformer.py and
VAST-AI-Research/MIDI-3D@b6ec9f6:midi/models/transformers/triposg_transformer.py (reference/midi.md section 1).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin, FeedForward
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import FP32LayerNorm
from diffusers.utils import USE_PEFT_BACKEND, BaseOutput, scale_lora_layers, unscale_lora_layers
from torch import nn

from engine.errors import CheckpointError, ProfileError
from engine.models.dit.attention import MultiInstanceAttnProcessor, TripoSGAttention, TripoSGAttnProcessor

__all__ = ["DiTBlock", "TripoSGDiTModel", "TripoSGDiTOutput"]

# The keys `forward` understands in `attention_kwargs`; the last two go to the attention processors.
_MODEL_KWARGS = ("scale", "cross_attention_scale", "cross_attention_2_scale")
_PROCESSOR_KWARGS = ("num_instances", "num_instances_per_batch")


@dataclass
class TripoSGDiTOutput(BaseOutput):
    """Output of `TripoSGDiTModel.forward`.

    Attributes:
        sample: Predicted velocity `x0 - noise`, (B, N, in_channels).
    """

    sample: torch.Tensor


class DiTBlock(nn.Module):
    """One pre-norm block: [long skip], self-attention, cross-attention(s), feed-forward.

    Args:
        dim: Token width.
        num_attention_heads: Heads of every attention (head width = dim / heads).
        cross_attention_dim: Width of `encoder_hidden_states` (attn2).
        cross_attention_2_dim: Width of `encoder_hidden_states_2` (attn2_2); None means no attn2_2.
        skip: Whether the block takes a long skip (the second half of the U).
    """

    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        cross_attention_dim: int,
        cross_attention_2_dim: int | None = None,
        skip: bool = False,
    ) -> None:
        super().__init__()
        dim_head = dim // num_attention_heads
        self.norm1 = FP32LayerNorm(dim, eps=1e-5, elementwise_affine=True)
        self.attn1 = TripoSGAttention(dim, num_attention_heads, dim_head)
        self.norm2 = FP32LayerNorm(dim, eps=1e-5, elementwise_affine=True)
        self.attn2 = TripoSGAttention(dim, num_attention_heads, dim_head, cross_attention_dim=cross_attention_dim)
        if cross_attention_2_dim is not None:
            self.norm2_2 = FP32LayerNorm(dim, eps=1e-5, elementwise_affine=True)
            self.attn2_2 = TripoSGAttention(
                dim, num_attention_heads, dim_head, cross_attention_dim=cross_attention_2_dim
            )
        else:
            self.norm2_2 = None
            self.attn2_2 = None
        self.norm3 = FP32LayerNorm(dim, eps=1e-5, elementwise_affine=True)
        self.ff = FeedForward(dim, activation_fn="gelu", inner_dim=4 * dim, bias=True)
        if skip:
            self.skip_norm = FP32LayerNorm(dim, eps=1e-5, elementwise_affine=True)
            self.skip_linear = nn.Linear(2 * dim, dim)
        else:
            self.skip_norm = None
            self.skip_linear = None

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, 1+N, W)
        encoder_hidden_states: torch.Tensor,  # (B, M, cross_attention_dim)
        encoder_hidden_states_2: torch.Tensor | None = None,  # (B, M2, cross_attention_2_dim)
        skip: torch.Tensor | None = None,  # (B, 1+N, W)
        attention_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor:  # (B, 1+N, W)
        kwargs = attention_kwargs or {}
        processor_kwargs = {k: kwargs[k] for k in _PROCESSOR_KWARGS if k in kwargs}
        # 0. Long skip. Concatenation order [skip, x] and the norm AFTER the linear are what the checkpoints
        # were trained with (the original source calls the norm placement "an error").
        if self.skip_linear is not None:
            hidden_states = self.skip_norm(self.skip_linear(torch.cat([skip, hidden_states], dim=-1)))
        # 1. Self-attention
        hidden_states = hidden_states + self.attn1(self.norm1(hidden_states), **processor_kwargs)
        # 2. Cross-attention; MIDI's second one reads the same x and is summed in parallel.
        cross = self.attn2(self.norm2(hidden_states), encoder_hidden_states, **processor_kwargs)
        cross = cross * kwargs.get("cross_attention_scale", 1.0)
        if self.attn2_2 is not None:
            if encoder_hidden_states_2 is None:
                raise ValueError("this model has attn2_2: pass encoder_hidden_states_2")
            cross_2 = self.attn2_2(self.norm2_2(hidden_states), encoder_hidden_states_2, **processor_kwargs)
            cross = cross + cross_2 * kwargs.get("cross_attention_2_scale", 1.0)
        hidden_states = hidden_states + cross
        # 3. Feed-forward
        return hidden_states + self.ff(self.norm3(hidden_states))


def _block_index(value: object, num_layers: int) -> int | None:
    """`value` as a block index (ints and numpy/torch integers), or None when it is not a valid one."""
    if isinstance(value, bool):
        return None
    try:
        index = operator.index(value)
    except TypeError:
        return None
    return index if 0 <= index < num_layers else None


class TripoSGDiTModel(ModelMixin, AttentionMixin, ConfigMixin, PeftAdapterMixin):
    """Rectified-flow DiT over a set of VAE latent tokens, conditioned by cross-attention.

    Config keys are TripoSG's constructor kwargs. A config with `cross_attention_2_dim` and no
    `use_cross_attention_2` (MIDI-3D's `transformer/config.json`) turns `attn2_2` on.

    Args:
        num_attention_heads: Heads per attention (head width = width / heads, 128 in the hub models).
        width: Token width.
        in_channels: Latent channels (input and output).
        num_layers: Blocks; the first `num_layers // 2` feed long skips to the last ones.
        cross_attention_dim: Width of `encoder_hidden_states` (attn2).
        use_cross_attention_2: Whether blocks have the parallel `attn2_2`; None means "if
            `cross_attention_2_dim` is set".
        cross_attention_2_dim: Width of `encoder_hidden_states_2` (attn2_2).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["DiTBlock"]

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 16,
        width: int = 2048,
        in_channels: int = 64,
        num_layers: int = 21,
        cross_attention_dim: int = 1024,
        use_cross_attention_2: bool | None = None,
        cross_attention_2_dim: int | None = None,
    ) -> None:
        super().__init__()
        if num_attention_heads < 1 or width % num_attention_heads:
            raise CheckpointError(
                f"config.json: `width` must be a multiple of `num_attention_heads`, got width={width!r}, "
                f"num_attention_heads={num_attention_heads!r}. Check the transformer config."
            )
        if use_cross_attention_2 is None:
            use_cross_attention_2 = cross_attention_2_dim is not None
        if use_cross_attention_2 and cross_attention_2_dim is None:
            raise CheckpointError(
                "config.json: `use_cross_attention_2` is true but `cross_attention_2_dim` is missing, got None. "
                "Set `cross_attention_2_dim` (1024 for DINOv2-L) or set `use_cross_attention_2` to false."
            )
        # Record the resolved flag so that a saved config.json is explicit.
        self.register_to_config(use_cross_attention_2=bool(use_cross_attention_2))

        self.time_embed = Timesteps(width, flip_sin_to_cos=False, downscale_freq_shift=0)
        self.time_proj = TimestepEmbedding(width, 4 * width, act_fn="gelu", out_dim=width)
        self.proj_in = nn.Linear(in_channels, width, bias=True)
        self.blocks = nn.ModuleList(
            [
                DiTBlock(
                    width,
                    num_attention_heads,
                    cross_attention_dim,
                    cross_attention_2_dim if use_cross_attention_2 else None,
                    skip=layer > num_layers // 2,
                )
                for layer in range(num_layers)
            ]
        )
        self.norm_out = nn.LayerNorm(width, eps=1e-5, elementwise_affine=True)
        self.proj_out = nn.Linear(width, in_channels, bias=True)
        self.gradient_checkpointing = False

    @property
    def multi_instance_blocks(self) -> list[int]:
        """Indices of the blocks whose self-attention is multi-instance."""
        return [
            i
            for i, block in enumerate(self.blocks)
            if isinstance(block.attn1.get_processor(), MultiInstanceAttnProcessor)
        ]

    def set_multi_instance_attention(self, blocks: Iterable[int]) -> None:
        """Makes the self-attention (`attn1`) of exactly these blocks multi-instance, all others ordinary.

        MIDI-3D uses blocks 8-12 of 21. Unlike MIDI's prefix match on processor names (where "blocks.1"
        also selects blocks 10-19), indices here are exact. `blocks=[]` turns multi-instance attention off.
        Cross-attentions are never touched.

        Raises:
            ProfileError: An index is not an int in `0..num_layers-1`.
        """
        wanted = list(blocks)
        num_layers = len(self.blocks)
        bad = [b for b in wanted if _block_index(b, num_layers) is None]
        if bad:
            raise ProfileError(
                f"`multi_instance_blocks`: block indices out of range, got {bad!r}. "
                f"Use integers in 0..{num_layers - 1} (this model has num_layers={num_layers})."
            )
        chosen = {_block_index(b, num_layers) for b in wanted}
        for i, block in enumerate(self.blocks):
            block.attn1.set_processor(MultiInstanceAttnProcessor() if i in chosen else TripoSGAttnProcessor())

    def set_default_attn_processor(self) -> None:
        """Sets the ordinary processor everywhere (multi-instance attention off)."""
        self.set_attn_processor(TripoSGAttnProcessor())

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, N, in_channels) raw VAE latents
        timestep: torch.Tensor | float,  # (B,) or scalar, t = 1000 * sigma in [0, 1000]
        encoder_hidden_states: torch.Tensor,  # (B, M, cross_attention_dim)
        encoder_hidden_states_2: torch.Tensor | None = None,  # (B, M2, cross_attention_2_dim)
        attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> TripoSGDiTOutput | tuple[torch.Tensor]:
        """Predicts the velocity `x0 - noise` for each latent token.

        Args:
            hidden_states: Noisy latents x_t = (1 - sigma) x0 + sigma noise, (B, N, in_channels).
            timestep: 1000 * sigma, one per sample or one for all.
            encoder_hidden_states: Condition tokens for `attn2`.
            encoder_hidden_states_2: Condition tokens for `attn2_2` (MIDI: 7-channel DINOv2); required
                when the model has `attn2_2`.
            attention_kwargs: `num_instances` / `num_instances_per_batch` (multi-instance layout, see
                `MultiInstanceAttnProcessor`), `scale` (PEFT LoRA scale), `cross_attention_scale`,
                `cross_attention_2_scale`.
            return_dict: Return a `TripoSGDiTOutput` instead of a tuple.

        Returns:
            The velocity, (B, N, in_channels).
        """
        kwargs = dict(attention_kwargs or {})
        unknown = sorted(set(kwargs) - set(_MODEL_KWARGS) - set(_PROCESSOR_KWARGS))
        if unknown:
            raise TypeError(
                f"attention_kwargs: unknown keys {unknown!r}; expected some of {_MODEL_KWARGS + _PROCESSOR_KWARGS!r}"
            )
        lora_scale = kwargs.pop("scale", 1.0)
        if USE_PEFT_BACKEND:
            scale_lora_layers(self, lora_scale)
        try:
            out = self._forward(hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_2, kwargs)
        finally:
            if USE_PEFT_BACKEND:
                unscale_lora_layers(self, lora_scale)
        if not return_dict:
            return (out,)
        return TripoSGDiTOutput(sample=out)

    def _forward(
        self,
        hidden_states: torch.Tensor,  # (B, N, C)
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_2: torch.Tensor | None,
        attention_kwargs: dict[str, Any],
    ) -> torch.Tensor:  # (B, N, C)
        batch, num_tokens, _ = hidden_states.shape
        timestep = torch.as_tensor(timestep, device=hidden_states.device)
        timestep = timestep.reshape(-1).expand(batch) if timestep.numel() == 1 else timestep.reshape(batch)

        # 1. The timestep becomes token 0 (no AdaLN anywhere).
        temb = self.time_proj(self.time_embed(timestep).to(hidden_states.dtype))  # (B, W)
        hidden_states = torch.cat([temb.unsqueeze(1), self.proj_in(hidden_states)], dim=1)  # (B, 1+N, W)

        # 2. Blocks with U-Net style long skips: the first L//2 push, the last L//2 pop (LIFO).
        num_layers = len(self.blocks)
        skips: list[torch.Tensor] = []
        for layer, block in enumerate(self.blocks):
            skip = skips.pop() if layer > num_layers // 2 else None
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(
                    block, hidden_states, encoder_hidden_states, encoder_hidden_states_2, skip, attention_kwargs
                )
            else:
                hidden_states = block(
                    hidden_states, encoder_hidden_states, encoder_hidden_states_2, skip, attention_kwargs
                )
            if layer < num_layers // 2:
                skips.append(hidden_states)

        # 3. Final norm, drop the time token, project back to latent channels.
        hidden_states = self.norm_out(hidden_states)[:, -num_tokens:]
        return self.proj_out(hidden_states)
