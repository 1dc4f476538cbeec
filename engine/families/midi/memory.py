"""Provides the MIDI family's memory description: DiT, VAE and image-encoder sizes, activations per token.

Nothing is built. Parameter counts come from the safetensors headers of the base folder when it
exists (exact, and a header is a few kilobytes), else from `transformer/config.json` analytically,
else from the published sizes (TripoSG/MIDI DiT 2048 wide, 21 layers; CLIP ViT-L/14; DINOv2-L).

Tokens are instances x (latent tokens + 1 time token) per scene: `model.num_instances_per_batch` x
(`model.num_tokens` + 1). Assumptions:
- Attention runs through SDPA's flash/memory-efficient kernels: O(seq) memory, no stored scores, also
  in the multi-instance blocks where a scene's instances attend to K x (tokens + 1) keys.
- The frozen VAE, CLIP and DINOv2 sit on the training device in `model.frozen_dtype` (the family moves
  them next to the DiT); with the latent cache they do not run during training steps.
- Gradient checkpointing covers every DiT block and keeps each block's input (and long-skip input).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from engine.families.base import Lever, MemoryDescription

_DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
_PUBLISHED_FROZEN = {"vae": 242_000_000, "clip": 303_966_208, "dino": 305_171_456}
"""Published parameter counts (see reference/midi.md §2.4, §3.4) used when the folder is absent."""
_MIDI_DIT = dict(num_attention_heads=16, width=2048, in_channels=64, num_layers=21, cross_attention_dim=768,
                 use_cross_attention_2=True, cross_attention_2_dim=1024)
_TINY_DIT = dict(num_attention_heads=2, width=32, in_channels=8, num_layers=3, cross_attention_dim=16,
                 use_cross_attention_2=True, cross_attention_2_dim=24)
"""`engine.models.dit.pipeline.build_tiny_pipeline`'s DiT (the base when `model.pretrained` is empty)."""
_TINY_FROZEN = 60_000
_COND_TOKENS = 1 + 257
_ACTIVATION_FACTOR = 1.7
"""Measured peak over the counted saved tensors of the DiT (CPU peak RSS of the tiny DiT at 2k and 8k
tokens; the per-head temporaries of attention backward and allocator retention)."""
"""CLIP's one projected token plus DINOv2-L's 257 tokens at 224 px, per instance."""


def safetensors_numel(path: Path) -> int | None:
    """Elements stored in a safetensors file, read from its header only; None when unreadable."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100 * 1024**2:
                return None
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        return None
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        n = 1
        for dim in info.get("shape", []):
            n *= int(dim)
        total += n
    return total


def _folder_numel(folder: Path) -> int | None:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    counts = [safetensors_numel(f) for f in files]
    return None if any(c is None for c in counts) else int(sum(counts))  # type: ignore[arg-type]


def dit_params(config: dict[str, Any]) -> int:
    """Parameters of a TripoSGDiTModel with this config (mirrors engine.models.dit.transformer)."""
    w, c, n = int(config["width"]), int(config["in_channels"]), int(config["num_layers"])
    heads = int(config["num_attention_heads"])
    d1 = int(config["cross_attention_dim"])
    d2 = config.get("cross_attention_2_dim") if config.get("use_cross_attention_2") else None
    head_dim = w // heads

    def attention(kv: int) -> int:
        return w * w + 2 * kv * w + w * w + w + 2 * head_dim

    total = (w * 4 * w + 4 * w + 4 * w * w + w) + (c * w + w) + 2 * w + (w * c + c)
    for layer in range(n):
        block = 2 * w + attention(w) + 2 * w + attention(d1) + 2 * w + (w * 4 * w + 4 * w + 4 * w * w + w)
        if d2 is not None:
            block += 2 * w + attention(int(d2))
        if layer > n // 2:
            block += 2 * w * w + w + 2 * w
        total += block
    return total


def _dit_config(profile: Any) -> tuple[dict[str, Any], str]:
    pretrained = profile.model.pretrained
    if pretrained is None:
        return dict(_TINY_DIT), "the tiny random base (empty `model.pretrained`)"
    path = Path(pretrained) / "transformer" / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return dict(_MIDI_DIT), f"{path} unreadable: assumed MIDI-3D's DiT (2048 wide, 21 layers)"
    merged = {**_MIDI_DIT, "cross_attention_dim": 1024, "use_cross_attention_2": None, "cross_attention_2_dim": None}
    merged.update({k: v for k, v in config.items() if not k.startswith("_")})
    if merged.get("use_cross_attention_2") is None:
        merged["use_cross_attention_2"] = merged.get("cross_attention_2_dim") is not None
    return merged, str(path)


def _frozen_encoders(recipe: Any, use_clip: bool) -> tuple[int, str]:
    root = Path(recipe.options.pretrained)
    if recipe.profile.model.pretrained is None and not (root / "model_index.json").is_file():
        return _TINY_FROZEN, "tiny base not built yet: frozen encoders approximated"
    total = 0
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in ("transformer", "scheduler")) \
            if root.is_dir() else []:
        n = _folder_numel(sub)
        if n:
            total += n
    if total:
        return total, f"frozen VAE/encoders counted from {root}"
    fallback = _PUBLISHED_FROZEN["vae"] + _PUBLISHED_FROZEN["dino"] + (_PUBLISHED_FROZEN["clip"] if use_clip else 0)
    return fallback, "frozen VAE/encoders: published sizes (no safetensors found)"


def _block_layer(i: int, n: int, w: int, cross2: bool, seq: int, mi: bool, rank_elems: float,
                 dropout_elems: float) -> dict[str, Any]:
    # attn1: norm in, qk-norm ins (fp32); projection in, q/k/v, out, to_out in (half).
    fp32, half = 3 * w, 6 * w
    # attn2 (and attn2_2): norm in, q-norm in (fp32); to_q in, q, out, to_out in (half).
    for _ in range(2 if cross2 else 1):
        fp32 += 2 * w
        half += 4 * w
    # feed-forward: norm in (fp32); proj in, GELU in, second linear in (half).
    fp32 += w
    half += w + 8 * w
    skip = i > n // 2
    if skip:
        fp32 += w
        half += 2 * w
    return {
        "name": f"blocks.{i}", "width": w, "tokens_factor": 1.0, "seq": seq, "multi_instance": mi,
        "fp32_elems": fp32, "half_elems": half + 1.25 * dropout_elems, "rank_elems": rank_elems,
        "ckpt_elems": 2 * w if skip else w, "checkpointable": True, "scores_stored": False,
    }


def describe_memory(recipe: Any) -> MemoryDescription:
    """The DiT description at the recipe's settings (see the module docstring for assumptions)."""
    profile = recipe.profile
    options, lora = profile.model, profile.lora
    config, config_source = _dit_config(profile)
    w, n, c = int(config["width"]), int(config["num_layers"]), int(config["in_channels"])
    cross2 = bool(config.get("use_cross_attention_2"))
    d1 = int(config["cross_attention_dim"])
    d2 = int(config["cross_attention_2_dim"]) if cross2 else 0

    # The resolved LoRA keys (the preset is already applied to them).
    rank, dropout = lora.r, lora.dropout
    blocks = lora.target_blocks
    kinds = list(recipe.options.attention_kinds)
    projections = set(lora.target_modules or ["to_q", "to_k", "to_v", "to_out.0"])
    adapted = set(range(n)) if blocks is None else {b for b in blocks if 0 <= b < n}
    mi_blocks = set(recipe.options.mi_blocks)

    def targeted(kind: str) -> list[str]:
        # NOTE: mirrors `DiTAttention(skip_single_key_queries=True)`, which leaves out a MIDI model's
        # CLIP cross-attention `to_q` (one key token: the query has no effect).
        names = sorted(p for p in projections if p in ("to_q", "to_k", "to_v", "to_out.0"))
        return [p for p in names if not (cross2 and kind == "cross" and p == "to_q")]

    def lora_shapes(kind: str) -> list[tuple[int, int]]:
        kv = {"self": w, "cross": d1, "cross2": d2}[kind]
        shapes = {"to_q": (w, w), "to_k": (kv, w), "to_v": (kv, w), "to_out.0": (w, w)}
        return [shapes[p] for p in targeted(kind)]

    per_block_rank = sum(i + o for kind in kinds for i, o in lora_shapes(kind))
    # Only projections fed by the latent tokens carry per-token LoRA activations (cross K/V see conditions).
    token_targets = [p for kind in kinds for p in targeted(kind) if p in ("to_q", "to_out.0") or kind == "self"]
    rank_elems = float(len(token_targets))
    dropout_elems = float(w * len(token_targets)) if dropout > 0 else 0.0

    tokens = int(options.num_tokens) + 1
    k = int(options.num_instances_per_batch)
    layers = [
        _block_layer(i, n, w, cross2, tokens * k if i in mi_blocks else tokens, i in mi_blocks,
                     rank_elems if i in adapted else 0.0, dropout_elems if i in adapted else 0.0)
        for i in range(n)
    ]
    layers.append({"name": "proj_in/out", "width": w, "tokens_factor": 1.0, "checkpointable": False,
                   "fp32_elems": w + c, "half_elems": c + w})

    dit_frozen = dit_params(config)
    frozen_source = config_source
    if options.pretrained is not None:
        counted = _folder_numel(Path(options.pretrained) / "transformer")
        if counted:
            dit_frozen, frozen_source = counted, f"DiT counted from {Path(options.pretrained) / 'transformer'}"
    encoders, encoder_source = _frozen_encoders(recipe, use_clip=cross2)
    frozen_bytes = dit_frozen * _DTYPE_BYTES[options.dit_dtype] + encoders * _DTYPE_BYTES[options.frozen_dtype]
    lora_per_rank = per_block_rank * len(adapted)
    # Per latent token: posterior mean and log-variance, noise, noisy latent, target (fp32); per instance:
    # the condition tokens, spread over its tokens.
    cond_bytes = 4 * (d1 + (_COND_TOKENS - 1) * (d2 or d1))
    input_bytes = 5 * 4 * c + cond_bytes / tokens
    notes = [
        f"tokens per scene: {k} instances x ({options.num_tokens} latent + 1 time) = {k * tokens}",
        f"DiT: {frozen_source}; {encoder_source}",
        "attention through SDPA flash/memory-efficient kernels: no stored (seq x seq) scores",
    ]
    if not profile.data.enable_latent_cache:
        notes.append("latent cache off: the VAE and encoders also run every step (not in this estimate)")
    loader_bytes, cache_bytes = _host_bytes(recipe, k)
    return MemoryDescription(
        frozen_params=int(dit_frozen + encoders),
        lora_params=int(lora_per_rank * rank),
        other_trainable_params=0,
        tokens_per_sample=k * tokens,
        layers=layers,
        frozen_bytes=int(frozen_bytes),
        rank=int(rank),
        lora_params_per_rank=int(lora_per_rank),
        input_bytes_per_token=float(input_bytes),
        index_bytes_per_token=0.0,
        activation_factor=_ACTIVATION_FACTOR,
        loader_sample_bytes=float(loader_bytes),
        disk_cache_bytes=cache_bytes,
        disk_cache_dir=recipe.options.cache_dir,
        lever=Lever("instances per scene", "model.num_instances_per_batch", max(1, k // 2)),
        notes=notes,
    )


def _host_bytes(recipe: Any, k: int) -> tuple[int, int]:
    """(one collated scene as the loader holds it, the latent cache on disk for every scene of the run)."""
    profile = recipe.profile
    posterior = 2 * 4 * 64 * profile.model.num_tokens  # cached posterior mean + log-variance per instance
    per_instance = posterior if profile.data.enable_latent_cache else 6 * 4 * (profile.data.num_samples or 20480)
    image = 3 * 4 * 512 * 512 * 3  # scene, instance and mask images at 512 px
    loader = k * (per_instance + image)
    if recipe.options.cache_dir is None:
        return loader, 0
    data = profile.data
    scenes = data.synthetic_train_scenes + data.synthetic_val_scenes
    if data.root is not None:
        root = Path(data.root)
        splits = [root / s for s in (data.train_split, data.val_split) if s and (root / s).is_dir()]
        folders = splits or ([root] if root.is_dir() else [])
        scenes = sum(1 for folder in folders for p in folder.iterdir() if p.is_dir())
    return loader, scenes * k * posterior
