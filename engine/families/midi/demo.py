"""Provides the MIDI demo: synthetic scenes, a tiny pretrained base, a real LoRA fine-tune, base vs adapted, a GLB.

1. Synthetic raw scenes (meshes + image + id map) of domain A and of the shifted domain B are written
   and prepared with `prepare_dataset`, the path a user's data takes.
2. A tiny base is built once and cached under `$LORA3D_CACHE`: `build_tiny_pipeline` (random CLIP and
   DINOv2, frozen anyway), its VAE trained as an SDF autoencoder of A and B primitives (`demo_vae`),
   and its DiT pretrained on domain-A latents with a plain loop, saved in the real MIDI folder layout.
3. The LoRA fine-tune on domain B runs through the real engine Trainer with `profiles/demo-midi.yaml`,
   loading the base through `model.pretrained`.
4. Base and adapted DiT are scored on B's validation scenes (flow-matching loss on a fixed sigma grid,
   Chamfer distance of generated instances) and a scene is generated into a GLB.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from engine.atomic import publish_folder
from engine.errors import ProfileError

__all__ = ["DEMO_PROFILE", "build_demo_base", "run_demo"]

DEMO_PROFILE = Path(__file__).resolve().parents[3] / "profiles" / "demo-midi.yaml"
_BASE_VERSION = 2
_VAE_VERSION = 1

# (full, quick) sizes.
_SIZES = {
    False: {"a_scenes": 16, "b_train": 12, "b_val": 4, "points": 1024, "image": 64, "base_steps": 600,
            "lora_steps": 120, "octree": 32, "sample_steps": 8, "vae_scenes": 24, "vae_steps": 1000},
    True: {"a_scenes": 6, "b_train": 6, "b_val": 2, "points": 512, "image": 32, "base_steps": 60,
           "lora_steps": 30, "octree": 16, "sample_steps": 4, "vae_scenes": 8, "vae_steps": 300},
}


def _cache_root() -> Path:
    from engine.cache import cache_root

    return cache_root()


def _recipe(overrides: dict[str, Any]):
    from engine.families.recipe import resolve_recipe
    from engine.profile import apply_overrides, read_yaml

    if not DEMO_PROFILE.is_file():
        raise ProfileError(f"{DEMO_PROFILE}: the demo profile is missing. Restore it from the repository (git checkout profiles/).")
    data = apply_overrides(read_yaml(DEMO_PROFILE), list(overrides.items()))
    return resolve_recipe(data, source=str(DEMO_PROFILE))


def _demo_vae(tiny_vae: Path, quick: bool, seed: int, num_tokens: int, console: Console | None) -> Path:
    """The demo's trained tiny VAE folder (see `demo_vae`), trained from `tiny_vae`'s random weights once, then reused."""
    from engine.families.midi.demo_vae import build_vae_shapes, fit_demo_vae, normalize_latent_scale
    from engine.models.dit.vae import TripoSGVAEModel

    sizes = _SIZES[quick]
    folder = _cache_root() / (f"midi-demo-vae-v{_VAE_VERSION}-scenes{sizes['vae_scenes']}-steps{sizes['vae_steps']}"
                              f"-pts{sizes['points']}-tokens{num_tokens}-seed{seed}")
    if (folder / "config.json").is_file():
        return folder
    started = time.perf_counter()
    shapes = build_vae_shapes(sizes["vae_scenes"], sizes["points"], seed)
    vae = TripoSGVAEModel.from_pretrained(str(tiny_vae), local_files_only=True)
    steps = sizes["vae_steps"]

    def log(step: int, loss: float) -> None:
        if console is not None and (step + 1) % max(1, steps // 4) == 0:
            console.print(f"  VAE pretraining on {shapes.surfaces.shape[0]} shapes: step {step + 1}/{steps}, loss {loss:.4f}")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fit_demo_vae(vae, shapes, num_tokens, steps, seed=seed, log=log)
    normalize_latent_scale(vae, shapes.surfaces, num_tokens)
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}")
    vae.save_pretrained(tmp, safe_serialization=True)
    (tmp / "lora3d_demo_vae.txt").write_text(
        f"tiny demo VAE: {steps} steps on {shapes.surfaces.shape[0]} synthetic A and B instances "
        f"in {time.perf_counter() - started:.0f}s\n"
    )
    publish_folder(tmp, folder)
    return folder


def build_demo_base(quick: bool = False, seed: int = 0, console: Console | None = None) -> Path:
    """The demo's tiny base pipeline folder, built and pretrained on domain A once, then reused."""
    from engine.families.midi.data import MidiSceneDataset, collate_scenes, synthetic_prepared_scenes
    from engine.families.midi.task import flow_loss
    from engine.models.dit.pipeline import build_tiny_pipeline

    sizes = _SIZES[quick]
    folder = _cache_root() / f"midi-demo-base-v{_BASE_VERSION}{'-quick' if quick else ''}-seed{seed}"
    if (folder / "model_index.json").is_file():
        return folder
    started = time.perf_counter()
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}")
    build_tiny_pipeline(tmp, seed=seed)
    recipe = _recipe({"model.pretrained": str(tmp), "data.root": None})
    profile = recipe.profile
    vae = _demo_vae(tmp / "vae", quick, seed, profile.model.num_tokens, console)
    shutil.rmtree(tmp / "vae")
    shutil.copytree(vae, tmp / "vae")
    train, _ = synthetic_prepared_scenes("A", sizes["a_scenes"], 0, seed, sizes["image"], sizes["points"])
    family = recipe.family
    dit = family.build_model(recipe)
    dataset = MidiSceneDataset(train, profile.model.num_instances_per_batch, seed, family.load_frozen(recipe),
                               recipe.options.cache_dir, profile.model.num_tokens, profile.data.num_samples)
    dit.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(dit.parameters(), lr=2e-3, weight_decay=0.0)
    steps, batch_size = sizes["base_steps"], 4
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in range(steps):
            gen = torch.Generator().manual_seed(seed * 7919 + step)
            dataset.set_epoch(step)
            indices = torch.randperm(len(dataset), generator=gen)[:batch_size].tolist()
            batch = collate_scenes([dataset[i] for i in indices])
            loss, _ = flow_loss(dit, batch, profile.model.num_tokens, cfg_dropout=0.1, logit_mean=0.0, logit_std=1.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if console is not None and (step + 1) % max(1, steps // 4) == 0:
                console.print(f"  base pretraining on domain A: step {step + 1}/{steps}, loss {loss.item():.4f}")
    dit.requires_grad_(False).eval()
    dit.set_default_attn_processor()  # the folder holds plain weights; MI blocks are a run setting
    shutil.rmtree(tmp / "transformer")
    dit.save_pretrained(tmp / "transformer", safe_serialization=True)
    (tmp / "lora3d_demo_base.txt").write_text(
        f"tiny demo base: DiT pretrained {steps} steps on synthetic domain A in {time.perf_counter() - started:.0f}s\n"
    )
    publish_folder(tmp, folder)
    return folder


def _score(recipe, adapter: Path | None) -> dict[str, float]:
    """Validation loss and Chamfer of the base (adapter None) or the adapted DiT on the recipe's val split."""
    from engine.lora import load_lora_checkpoint

    family, profile = recipe.family, recipe.profile
    model = family.build_model(recipe)
    if adapter is not None:
        load_lora_checkpoint(model, adapter)
    model.eval()
    _, val = family.build_datasets(recipe)
    indices = list(range(len(val)))
    micro = profile.train.batch_size
    batches = (family.collate([val[i] for i in indices[s : s + micro]]) for s in range(0, len(indices), micro))
    with torch.random.fork_rng(devices=[]):
        return recipe.task.evaluate(model, batches, with_chamfer=True)


def _vae_reconstruction(recipe, scenes: list[Path]) -> float:
    """Chamfer to the ground truth of the frozen VAE's own reconstructions: the floor no generated scene can beat."""
    from engine.families.midi.demo_vae import reconstruction_chamfer
    from engine.families.midi.latents import scene_surfaces
    from engine.families.midi.scene_data import load_prepared_scene

    profile = recipe.profile
    vae = recipe.family.load_frozen(recipe).vae
    surfaces = torch.cat([scene_surfaces(load_prepared_scene(folder), None) for folder in scenes])
    return reconstruction_chamfer(vae, surfaces, profile.model.num_tokens, profile.data.eval_octree_resolution)


def run_demo(out_dir: Path | None, console: Console | None = None, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Runs the whole demo; returns base and adapted metrics, the run directory and the GLB path.

    Args:
        out_dir: where the data, the run and the GLB go (default `runs/demo-midi`).
        console: rich console for progress and the result table.
        quick: a much smaller demo (tests).
        seed: seed of the data, the base and the run.
    """

    console = console or Console()
    threads = torch.get_num_threads()
    # Tiny models gain nothing from intra-op threads, and on a busy machine spinning threads slow them 10x.
    torch.set_num_threads(1)
    try:
        return _run_demo(out_dir, console, quick, seed)
    finally:
        torch.set_num_threads(threads)


def _run_demo(out_dir: Path | None, console: Console, quick: bool, seed: int) -> dict[str, Any]:
    from engine.families.midi.data import synthetic_prepared_scenes
    from engine.families.midi.inference import run_inference
    from engine.train.trainer import train

    sizes = _SIZES[quick]
    out = Path(out_dir) if out_dir is not None else Path("runs") / "demo-midi"
    started = time.perf_counter()
    console.print("[bold]MIDI demo[/bold]: 1/4 synthetic scenes (domain B: cones and tori, tall or flat)")
    data_root = out / "data"
    train_b, val_b = synthetic_prepared_scenes("B", sizes["b_train"], sizes["b_val"], seed + 1, sizes["image"],
                                               sizes["points"], root=data_root)
    prepared = train_b[0].parent.parent
    console.print("2/4 tiny base (built and pretrained on domain A once, cached under $LORA3D_CACHE)")
    base = build_demo_base(quick=quick, seed=seed, console=console)
    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = {
        "model.pretrained": str(base), "data.root": str(prepared), "output.dir": str(run_dir),
        "train.max_steps": sizes["lora_steps"], "train.seed": seed,
        "data.eval_octree_resolution": sizes["octree"], "data.eval_sample_steps": sizes["sample_steps"],
        "data.eval_chamfer_scenes": sizes["b_val"],
    }
    recipe = _recipe(overrides)
    profile = recipe.profile
    console.print(f"3/4 LoRA fine-tune on domain B: {sizes['lora_steps']} steps, rank {profile.lora.r}")
    t0 = time.perf_counter()
    result = train(recipe, install_signal_handlers=False)
    train_seconds = time.perf_counter() - t0
    adapter = run_dir / "adapter"
    console.print("4/4 base vs adapted on domain B's validation scenes")
    base_metrics = _score(recipe, None)
    adapted_metrics = _score(recipe, adapter)
    recon_chamfer = _vae_reconstruction(recipe, val_b[: sizes["b_val"]])
    glb = out / "result.glb"
    run_inference(base, adapter, val_b[0] / "image.png", val_b[0] / "seg.png", glb, steps=sizes["sample_steps"],
                  guidance_scale=3.0, seed=seed, octree_resolution=sizes["octree"], device="cpu",
                  num_tokens=profile.model.num_tokens)
    table = Table(title="MIDI demo: domain B validation (lower is better)")
    table.add_column("model")
    table.add_column("val loss", justify="right")
    table.add_column("Chamfer to VAE recon.", justify="right")
    table.add_column("Chamfer to GT points", justify="right")
    table.add_column("surface found", justify="right")
    for name, m in (("base (pretrained on A)", base_metrics), ("adapted (LoRA on B)", adapted_metrics)):
        table.add_row(name, f"{m['val_loss']:.4f}", f"{m.get('val_chamfer_recon', float('nan')):.4f}",
                      f"{m.get('val_chamfer', float('nan')):.4f}", f"{m.get('val_surface_found', float('nan')):.0%}")
    table.add_row("VAE reconstruction (floor)", "", "", f"{recon_chamfer:.4f}", "")
    console.print(table)
    console.print("Chamfer to the ground truth includes where each instance stands; the demo's images come from a "
                  "random azimuth over a plain floor, so placement is largely a guess for base and adapted alike. "
                  "An instance whose generated field has no surface counts 1.0.")
    total = time.perf_counter() - started
    console.print(f"run: {run_dir}  adapter: {adapter}  scene: {glb}  ({total:.0f}s, LoRA training {train_seconds:.0f}s)")
    return {
        "base": base_metrics, "adapted": adapted_metrics, "run_dir": run_dir, "adapter": adapter, "glb": glb,
        "recon_chamfer": recon_chamfer, "losses": result.losses, "seconds": total, "train_seconds": train_seconds, "base_folder": base,
    }
