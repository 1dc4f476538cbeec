"""Provides TripoSGVAEModel: the perceiver-style SDF autoencoder used by TripoSG and MIDI-3D.

The module tree and state-dict names follow TripoSG's `TripoSGVAEModel`
(VAST-AI-Research/TripoSG@fc5c409:triposg/models/autoencoders/autoencoder_kl_triposg.py), so hub
`vae/` folders load with `from_pretrained` and the golden weights load with `strict=True`.

NOTE: every attention here uses TripoSG's fused, head-interleaved q/k/v re-split (the same convention
as the DiT in engine/models/dit/attention.py), but without qk-norm. See `VAEAttnProcessor`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from engine.models.dit.fps import sample_query_indices

__all__ = [
    "DecoderOutput",
    "DiagonalGaussian",
    "EncoderOutput",
    "FrequencyEmbedding",
    "TripoSGVAEModel",
    "VAEAttnProcessor",
]


class FrequencyEmbedding(nn.Module):
    """Fourier features `[p, sin(e), cos(e)]` with `e` coordinate-major (x·f0..x·fK, y·f0.., z·f0..).

    Frequencies are `2^k` (k = 0..num_freqs-1), times pi when `include_pi`; they live in a
    non-persistent buffer so the state dict carries no entry for them (as in TripoSG).
    """

    def __init__(self, num_freqs: int = 8, input_dim: int = 3, include_pi: bool = False) -> None:
        super().__init__()
        freqs = 2.0 ** torch.arange(num_freqs, dtype=torch.float32)
        if include_pi:
            freqs = freqs * torch.pi
        self.register_buffer("frequencies", freqs, persistent=False)
        self.num_freqs = num_freqs
        self.input_dim = input_dim
        self.out_dim = input_dim * (2 * num_freqs + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed points.

        Args:
            x: (..., input_dim) coordinates.

        Returns:
            (..., out_dim) features.
        """
        if self.num_freqs == 0:
            return x
        e = (x[..., :, None] * self.frequencies.to(x.dtype)).reshape(*x.shape[:-1], -1)
        return torch.cat([x, e.sin(), e.cos()], dim=-1)


class _FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back, like diffusers' FP32LayerNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(
            x.float(),
            self.normalized_shape,
            self.weight.float() if self.weight is not None else None,
            self.bias.float() if self.bias is not None else None,
            self.eps,
        )
        return out.to(x.dtype)


class VAEAttnProcessor:
    """SDPA with TripoSG's fused head-interleaved q/k/v split and no qk-norm.

    Self-attention: `cat(to_q(x), to_k(x), to_v(x))` is viewed as (B, S, heads, 3·hd) and split into
    q | k | v along the last axis. Cross-attention: `q = to_q(x)` plainly, `cat(to_k(c), to_v(c))` is
    viewed as (B, M, heads, 2·hd) and split into k | v. The key/value source passes through
    `norm_cross` first when the module has one.
    """

    def __call__(
        self,
        attn: VAEAttention,
        hidden_states: torch.Tensor,  # (B, S, C)
        encoder_hidden_states: torch.Tensor | None = None,  # (B, M, Cc)
    ) -> torch.Tensor:
        batch, seq, _ = hidden_states.shape
        heads = attn.heads
        if encoder_hidden_states is None:
            qkv = torch.cat(
                [attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)], dim=-1
            )
            head_dim = qkv.shape[-1] // (3 * heads)
            q, k, v = qkv.view(batch, seq, heads, 3 * head_dim).split(head_dim, dim=-1)
        else:
            if attn.norm_cross is not None:
                encoder_hidden_states = attn.norm_cross(encoder_hidden_states)
            q = attn.to_q(hidden_states)
            head_dim = q.shape[-1] // heads
            q = q.view(batch, seq, heads, head_dim)
            kv = torch.cat([attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)], dim=-1)
            k, v = kv.view(batch, kv.shape[1], heads, 2 * head_dim).split(head_dim, dim=-1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = out.transpose(1, 2).reshape(batch, seq, heads * head_dim)
        return attn.to_out[1](attn.to_out[0](out))


class VAEAttention(nn.Module):
    """Attention weights with TripoSG's names: to_q/to_k/to_v (no bias), to_out.0 (bias), norm_cross."""

    def __init__(self, dim: int, heads: int, cross_attention_dim: int | None = None, use_norm_cross: bool = False):
        super().__init__()
        kv_dim = cross_attention_dim or dim
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(kv_dim, dim, bias=False)
        self.to_v = nn.Linear(kv_dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim, bias=True), nn.Dropout(0.0)])
        self.norm_cross = nn.LayerNorm(kv_dim, eps=1e-5) if use_norm_cross else None
        self.processor = VAEAttnProcessor()

    def set_processor(self, processor: VAEAttnProcessor) -> None:
        self.processor = processor

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        return self.processor(self, hidden_states, encoder_hidden_states)


class _GELUProj(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class _FeedForward(nn.Module):
    """diffusers FeedForward("gelu") layout: net.0.proj -> exact GELU -> net.1 dropout -> net.2."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.ModuleList([_GELUProj(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class VAEBlock(nn.Module):
    """Pre-norm residual block: either self-attention (norm1/attn1) or cross-attention (norm2/attn2), then FF."""

    def __init__(self, dim: int, heads: int, cross: bool) -> None:
        super().__init__()
        self.cross = cross
        if cross:
            self.norm2 = _FP32LayerNorm(dim, eps=1e-5)
            self.attn2 = VAEAttention(dim, heads, cross_attention_dim=dim, use_norm_cross=True)
        else:
            self.norm1 = _FP32LayerNorm(dim, eps=1e-5)
            self.attn1 = VAEAttention(dim, heads)
        self.norm3 = _FP32LayerNorm(dim, eps=1e-5)
        self.ff = _FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.cross:
            x = x + self.attn2(self.norm2(x), context)
        else:
            x = x + self.attn1(self.norm1(x))
        return x + self.ff(self.norm3(x))


class TripoSGEncoder(nn.Module):
    """Perceiver encoder: query tokens cross-attend to all surface points, then self-attention blocks."""

    def __init__(self, in_channels: int, dim: int, heads: int, num_layers: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(in_channels, dim, bias=True)
        self.blocks = nn.ModuleList(
            [VAEBlock(dim, heads, cross=True)] + [VAEBlock(dim, heads, cross=False) for _ in range(num_layers)]
        )
        self.norm_out = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor) -> torch.Tensor:
        """Encode.

        Args:
            x_q: (B, T, Cin) embedded query points.
            x_kv: (B, P, Cin) embedded surface points.

        Returns:
            (B, T, dim) tokens after `norm_out`.
        """
        h = self.proj_in(x_q)
        context = self.proj_in(x_kv)
        h = self.blocks[0](h, context)
        for block in self.blocks[1:]:
            h = block(h)
        return self.norm_out(h)


class TripoSGDecoder(nn.Module):
    """Latent self-attention stack (run once) plus one cross-attention block queried per point."""

    def __init__(self, in_channels: int, dim: int, heads: int, num_layers: int, out_channels: int = 1) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [VAEBlock(dim, heads, cross=False) for _ in range(num_layers)] + [VAEBlock(dim, heads, cross=True)]
        )
        self.proj_query = nn.Linear(in_channels, dim, bias=True)
        self.norm_out = nn.LayerNorm(dim, eps=1e-5)
        self.proj_out = nn.Linear(dim, out_channels, bias=True)

    def latent_kv(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Run the self-attention stack over the post-quant latents (B, N, dim) -> (B, N, dim)."""
        for block in self.blocks[:-1]:
            hidden_states = block(hidden_states)
        return hidden_states

    def query(self, kv: torch.Tensor, query_features: torch.Tensor) -> torch.Tensor:
        """SDF values for embedded queries (B, Q, Cin) against cached kv (B, N, dim) -> (B, Q, 1).

        The x(-1) is TripoSG's (autoencoder_kl_triposg.py, TripoSGDecoder.forward).
        """
        h = self.blocks[-1](self.proj_query(query_features), kv)
        return -self.proj_out(self.norm_out(h))


class DiagonalGaussian:
    """Diagonal Gaussian posterior from `parameters` (..., 2C): first half mean, second half log-variance.

    The log-variance is clamped to [-30, 20] as in TripoSG's DiagonalGaussianDistribution.
    """

    def __init__(self, parameters: torch.Tensor) -> None:
        self.parameters = parameters
        self.mean, logvar = parameters.chunk(2, dim=-1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    @classmethod
    def from_mean_logvar(cls, mean: torch.Tensor, logvar: torch.Tensor) -> DiagonalGaussian:
        """Rebuild a posterior from stored mean and log-variance (e.g. a latent cache), both (..., C)."""
        return cls(torch.cat([mean, logvar], dim=-1))

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw `mean + std * eps` with eps from `generator` (drawn on the generator's device)."""
        device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * eps.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL divergence to N(0, I), summed over all but the batch axis -> (B,)."""
        kl = 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar)
        return kl.flatten(1).sum(dim=1)


@dataclass
class EncoderOutput:
    latent_dist: DiagonalGaussian


@dataclass
class DecoderOutput:
    sample: torch.Tensor  # (B, Q, 1)


class TripoSGVAEModel(ModelMixin, ConfigMixin):
    """TripoSG's SDF VAE: surface points+normals -> (B, T, latent_channels) latents -> SDF at query points.

    Config keys equal TripoSG's constructor kwargs (hub `vae/config.json` loads unchanged).
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 64,
        num_attention_heads: int = 8,
        width_encoder: int = 512,
        width_decoder: int = 1024,
        num_layers_encoder: int = 8,
        num_layers_decoder: int = 16,
        embedding_type: str = "frequency",
        embed_frequency: int = 8,
        embed_include_pi: bool = False,
    ) -> None:
        super().__init__()
        if embedding_type != "frequency":
            raise ValueError(f"embedding_type: only 'frequency' is supported, got {embedding_type!r}.")
        self.out_channels = 1
        self.embedder = FrequencyEmbedding(embed_frequency, in_channels, embed_include_pi)
        # NOTE: the encoder input is [embed(xyz), normals]: embedding first, raw features last.
        self.encoder = TripoSGEncoder(
            in_channels + self.embedder.out_dim, width_encoder, num_attention_heads, num_layers_encoder
        )
        self.decoder = TripoSGDecoder(self.embedder.out_dim, width_decoder, num_attention_heads, num_layers_decoder)
        self.quant = nn.Linear(width_encoder, latent_channels * 2, bias=True)
        self.post_quant = nn.Linear(latent_channels, width_decoder, bias=True)
        self.use_slicing = False
        self.slicing_length = 1

    def enable_slicing(self, slicing_length: int = 1) -> None:
        """Encode/decode the batch in slices of `slicing_length` samples to bound memory."""
        self.use_slicing = True
        self.slicing_length = slicing_length

    def disable_slicing(self) -> None:
        self.use_slicing = False

    # ---- encoding -------------------------------------------------------------------------------
    def embed_surface(self, surface: torch.Tensor) -> torch.Tensor:
        """(B, P, in_channels + F) xyz(+features) -> (B, P, embed_dim + F) encoder input."""
        pos_channels = self.config.in_channels
        return torch.cat([self.embedder(surface[..., :pos_channels]), surface[..., pos_channels:]], dim=-1)

    def select_queries(
        self,
        surface: torch.Tensor,  # (B, P, C)
        num_tokens: int,
        seed: int | np.random.Generator | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Pick the query points as TripoSG does: 4·T random candidates (numpy), FPS down to T.

        FPS starts at candidate 0 in eval mode and at a random candidate (from `generator`) in
        training mode, mirroring `torch_cluster.fps(random_start=self.training)`.

        Returns:
            (B, T, C) selected surface rows (xyz and features).
        """
        idx = sample_query_indices(
            surface[..., :3], num_tokens, seed=seed, random_start=self.training, generator=generator
        )  # (B, T)
        return torch.gather(surface, 1, idx[..., None].expand(-1, -1, surface.shape[-1]))

    def _encode(
        self,
        surface: torch.Tensor,
        num_tokens: int,
        seed: int | np.random.Generator | None,
        query_indices: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        if query_indices is not None:
            if query_indices.dim() == 1:
                queries = surface[:, query_indices.to(surface.device)]
            else:
                idx = query_indices.to(surface.device)
                queries = torch.gather(surface, 1, idx[..., None].expand(-1, -1, surface.shape[-1]))
        else:
            queries = self.select_queries(surface, num_tokens, seed=seed, generator=generator)
        x_kv = self.embed_surface(surface)
        x_q = self.embed_surface(queries)
        return self.quant(self.encoder(x_q, x_kv))

    def encode(
        self,
        surface: torch.Tensor,
        num_tokens: int = 2048,
        seed: int | np.random.Generator | None = None,
        query_indices: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> EncoderOutput | tuple[DiagonalGaussian]:
        """Encode surface samples into a latent posterior.

        Args:
            surface: (B, P, 6) xyz + unit normals, object normalized into [-1, 1]^3.
            num_tokens: T, the number of latent tokens.
            seed: seed (or numpy Generator) of the 4·T candidate draw; None draws fresh entropy.
            query_indices: (T,) or (B, T) int64 indices into P that replace the sampling step.
            generator: torch generator for the random FPS start in training mode.
            return_dict: return `EncoderOutput` (else a 1-tuple).

        Returns:
            `EncoderOutput(latent_dist=DiagonalGaussian)` with mean/logvar of shape (B, T, latent_channels).
        """
        surface = surface.to(self.dtype)
        if self.use_slicing and surface.shape[0] > 1 and (query_indices is None or query_indices.dim() == 1):
            params = torch.cat(
                [
                    self._encode(part, num_tokens, seed, query_indices, generator)
                    for part in surface.split(self.slicing_length)
                ]
            )
        else:
            params = self._encode(surface, num_tokens, seed, query_indices, generator)
        posterior = DiagonalGaussian(params)
        return EncoderOutput(latent_dist=posterior) if return_dict else (posterior,)

    # ---- decoding -------------------------------------------------------------------------------
    def decode_kv(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, N, latent_channels) raw latents -> (B, N, width_decoder) cached decoder context."""
        return self.decoder.latent_kv(self.post_quant(latents.to(self.dtype)))

    def query(self, kv: torch.Tensor, points: torch.Tensor, num_chunks: int = 50000) -> torch.Tensor:
        """SDF at `points` (B, Q, 3) given `kv` from `decode_kv`, in chunks of `num_chunks` points -> (B, Q, 1).

        `num_chunks` is the number of points per chunk (TripoSG's name for it).
        """
        out = []
        for start in range(0, points.shape[1], num_chunks):
            chunk = points[:, start : start + num_chunks].to(kv.device, kv.dtype)
            out.append(self.decoder.query(kv, self.embedder(chunk)))
        return torch.cat(out, dim=1)

    def decode(
        self,
        latents: torch.Tensor,
        sampled_points: torch.Tensor,
        num_chunks: int = 50000,
        return_dict: bool = True,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Decode SDF values.

        Args:
            latents: (B, N, latent_channels), raw (no scaling or shift).
            sampled_points: (B, Q, 3) query xyz.
            num_chunks: query points per chunk; the latent self-attention runs once regardless.
            return_dict: return `DecoderOutput` (else a 1-tuple).

        Returns:
            `DecoderOutput(sample=(B, Q, 1))`, already multiplied by -1 as in TripoSG.
        """
        if self.use_slicing and latents.shape[0] > 1:
            sdf = torch.cat(
                [
                    self.query(self.decode_kv(z), p, num_chunks)
                    for z, p in zip(latents.split(self.slicing_length), sampled_points.split(self.slicing_length))
                ]
            )
        else:
            sdf = self.query(self.decode_kv(latents), sampled_points, num_chunks)
        return DecoderOutput(sample=sdf) if return_dict else (sdf,)

    def forward(self, surface: torch.Tensor, sampled_points: torch.Tensor, num_tokens: int = 2048) -> torch.Tensor:
        """Reconstruct: encode `surface` (B, P, 6), take the posterior mode, decode at `sampled_points` (B, Q, 3)."""
        latents = self.encode(surface, num_tokens=num_tokens).latent_dist.mode()
        return self.decode(latents, sampled_points).sample
