"""Provides the memory section: the planner's estimate against `torch.cuda.max_memory_allocated`.

Each case resolves a real profile (`engine.families.recipe.resolve_recipe`), builds what the family's
training step holds on the device, runs `_STEPS` AdamW steps of the family's own loss under bf16 autocast,
and compares the allocator's peak (from an empty device, weights included) with the planner's estimate
at the same settings without the CUDA context and fragmentation overhead, which the allocator does not
see (`expected_bytes - breakdown["overhead"]`). Goal: within `GOAL` (a miss is reported, not a failure).

- SceneSplat: PTv3 with SceneSplat's configuration (`model.backbone: scenesplat`, ~92M parameters) on
  one synthetic room voxelised at 2 cm and cropped to 20k, 50k and 100k points, with and without
  gradient checkpointing. The estimate is taken at the points that actually ran.
- DiT: MIDI's DiT at TripoSG's full width (2048 wide, 21 layers, 16 heads), random weights built on the
  device, LoRA from the profile, fed cached posteriors and image tokens (what the latent cache gives the
  trainer) for `--dit-instances` instances of 2048 and 4096 latent tokens, with and without
  checkpointing. The frozen VAE/CLIP/DINOv2 do not run in a cached step; their bytes (published sizes)
  are left out of the estimate, and nothing stands in for them on the device.

A dry run uses the demo's tiny PTv3 and a tiny DiT on the CPU, where there is no allocator peak: the
estimate is reported as information only.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import replace
from typing import Any

import torch
from accelerate.utils import send_to_device

from engine.families.midi.memory import dit_params
from engine.families.recipe import resolve_recipe
from engine.lora.inject import apply_lora_spec
from engine.memory.estimate import estimate_description
from engine.models.dit import TripoSGDiTModel
from gpucheck.record import Context, Section

GOAL = 0.10
_STEPS = 2
_PRECISION = "bf16"
_MIDI_DIT = {"_class_name": "TripoSGDiTModel", "num_attention_heads": 16, "width": 2048, "in_channels": 64,
             "num_layers": 21, "cross_attention_dim": 768, "use_cross_attention_2": True, "cross_attention_2_dim": 1024}
"""MIDI-3D's DiT: TripoSG's width, depth and heads plus MIDI's second cross-attention (reference/midi.md)."""
_TINY_DIT = {**_MIDI_DIT, "num_attention_heads": 2, "width": 64, "num_layers": 4, "cross_attention_dim": 16,
             "cross_attention_2_dim": 24}
_COND_TOKENS = 257
"""DINOv2-L tokens per instance at 224 px (CLIP gives one)."""


def _cases(ctx: Context) -> tuple[list[int], list[int], str]:
    """(SceneSplat points, DiT latent tokens, PTv3 backbone)."""
    if ctx.dry_run:
        return [1500], [16], "demo-tiny"
    return [20_000, 50_000, 100_000], [2048, 4096], "scenesplat"


def run(ctx: Context, section: Section) -> None:
    points, tokens, backbone = _cases(ctx)
    section.facts["precision"] = _PRECISION
    for n in points:
        for ckpt in (False, True):
            name = f"SceneSplat PTv3 ({backbone}), {n} points, checkpointing {'on' if ckpt else 'off'}"
            with section.guard(name):
                _judge(ctx, section, name, *_scenesplat_case(ctx, backbone, n, ckpt))
    instances = 2 if ctx.dry_run else int(ctx.options.get("dit_instances", 1))
    for t in tokens:
        for ckpt in (False, True):
            name = f"MIDI DiT {'tiny' if ctx.dry_run else 'full width'}, {instances} x {t} tokens, " \
                   f"checkpointing {'on' if ckpt else 'off'}"
            with section.guard(name):
                _judge(ctx, section, name, *_dit_case(ctx, t, instances, ckpt))


def _judge(ctx: Context, section: Section, name: str, estimate: int, measured: int | None, info: dict) -> None:
    mib = 2**20
    ran = f"{info['points']} points ran" if "points" in info else f"{info['tokens']} tokens"
    if "encoders_left_out_bytes" in info:
        ran += f"; frozen encoders ({info['encoders_left_out_bytes'] / 2**30:.1f} GiB) left out of the estimate"
    if measured is None:
        section.add(name, "info", f"estimate {estimate / mib:.0f} MiB ({ran}); no allocator peak on the CPU to "
                    "compare", estimate_bytes=estimate, **info)
        return
    ratio = estimate / measured
    status = "pass" if abs(ratio - 1) <= GOAL else "miss"
    section.add(name, status, f"estimate {estimate / mib:.0f} MiB vs measured {measured / mib:.0f} MiB: "
                f"ratio {ratio:.3f} (goal within {GOAL:.0%}; {ran})", estimate_bytes=estimate, measured_bytes=measured,
                ratio=ratio, **info)


def _steps(ctx: Context, model: torch.nn.Module, loss_fn, batch: dict[str, Any]) -> tuple[int | None, Any, float]:
    """`_STEPS` AdamW steps; returns (peak allocated bytes or None on CPU, last StepOutput, seconds)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    t0 = time.time()
    out = None
    for _ in range(_STEPS):
        with torch.autocast(ctx.device, dtype=torch.bfloat16):
            out = loss_fn(model, batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak = None
    if ctx.device == "cuda":
        torch.cuda.synchronize()
        peak = int(torch.cuda.max_memory_allocated())
    return peak, out, time.time() - t0


def _empty_device(ctx: Context) -> None:
    gc.collect()
    if ctx.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _estimate(recipe: Any, description: Any) -> tuple[int, dict[str, int]]:
    """The planner's expected peak at the recipe's settings, without the overhead the allocator cannot see."""
    train = recipe.profile.train
    est = estimate_description(description, train.batch_size, train.gradient_checkpointing, train.mixed_precision,
                               device="cuda")
    return est.expected_bytes - est.breakdown["overhead"], est.breakdown


def _scenesplat_case(ctx: Context, backbone: str, points: int, ckpt: bool) -> tuple[int, int | None, dict]:
    recipe = resolve_recipe({
        "schema_version": 1,
        "model": {"family": "scenesplat", "backbone": backbone, "task": "semseg"},
        "data": {"synthetic_points": 2 * points, "point_budget": points, "grid_size": 0.02, "augment": False,
                 "synthetic_train": 1, "synthetic_val": 0},
        "train": {"device": ctx.device, "batch_size": 1, "gradient_checkpointing": ckpt, "mixed_precision": _PRECISION},
        "output": {"dir": str(ctx.work / "memory-run"), "tensorboard": False},
    }, source="<gpu_check memory>")
    family = recipe.family
    train_ds, _ = family.build_datasets(recipe)
    batch = family.collate([train_ds[0]])
    _empty_device(ctx)
    base = torch.cuda.memory_allocated() if ctx.device == "cuda" else 0
    torch.manual_seed(0)
    model = apply_lora_spec(family.build_model(recipe), recipe.lora)
    family.set_gradient_checkpointing(model, ckpt)
    model.to(ctx.device)
    peak, out, seconds = _steps(ctx, model, recipe.task.loss, send_to_device(batch, ctx.device))
    description = family.describe_memory(recipe)
    if description.tokens_vary:
        description = replace(description, tokens_per_sample=int(out.num_tokens))
    estimate, breakdown = _estimate(recipe, description)
    del model, batch, out
    _empty_device(ctx)
    return estimate, None if peak is None else peak - base, {
        "points": int(description.tokens_per_sample), "breakdown": breakdown, "seconds": seconds}


def _dit_case(ctx: Context, tokens: int, instances: int, ckpt: bool) -> tuple[int, int | None, dict]:
    config = _TINY_DIT if ctx.dry_run else _MIDI_DIT
    folder = ctx.work / ("dit-tiny" if ctx.dry_run else "dit-full")
    (folder / "transformer").mkdir(parents=True, exist_ok=True)
    (folder / "transformer" / "config.json").write_text(json.dumps(config))
    recipe = resolve_recipe({
        "schema_version": 1,
        "model": {"family": "midi", "pretrained": str(folder), "num_tokens": tokens, "num_instances_per_batch": instances},
        "train": {"device": ctx.device, "batch_size": 1, "gradient_checkpointing": ckpt, "mixed_precision": _PRECISION},
        "output": {"dir": str(ctx.work / "memory-run"), "tensorboard": False},
    }, source="<gpu_check memory>")
    family = recipe.family
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    _empty_device(ctx)
    base = torch.cuda.memory_allocated() if ctx.device == "cuda" else 0
    torch.manual_seed(0)
    with torch.device(ctx.device):
        model = TripoSGDiTModel(**kwargs)
    model.set_multi_instance_attention(list(recipe.options.mi_blocks))
    model.requires_grad_(False)
    model = apply_lora_spec(model, recipe.lora)
    family.set_gradient_checkpointing(model, ckpt)
    g = torch.Generator().manual_seed(1)
    width2 = config["cross_attention_2_dim"]
    batch = {
        "latent_mean": torch.randn(instances, tokens, config["in_channels"], generator=g),
        "latent_logvar": torch.full((instances, tokens, config["in_channels"]), -4.0),
        "clip": torch.randn(instances, 1, config["cross_attention_dim"], generator=g),
        "dino": torch.randn(instances, _COND_TOKENS, width2, generator=g),
        "num_instances": torch.tensor([instances]),
        "num_instances_per_batch": instances,
        "real": torch.ones(instances, dtype=torch.bool),
    }
    batch = {k: v.to(ctx.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    peak, _, seconds = _steps(ctx, model, recipe.task.loss, batch)
    dit_numel = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    description = family.describe_memory(recipe)
    # The frozen encoders are in the description at their published sizes but not on the device here.
    encoders = description.frozen_bytes - 4 * dit_params(kwargs)
    description = replace(description, frozen_bytes=description.frozen_bytes - encoders)
    estimate, breakdown = _estimate(recipe, description)
    del model, batch
    _empty_device(ctx)
    return estimate, None if peak is None else peak - base, {
        "tokens": instances * (tokens + 1), "breakdown": breakdown, "seconds": seconds,
        "encoders_left_out_bytes": encoders, "dit_params_counted": dit_params(kwargs), "dit_params_built": dit_numel}
