"""Provides the MIDI demo: a tiny base and a LoRA fine-tune, all trained by the engine's Trainer; base vs adapted, a GLB.

1. The tiny base, built once and cached under `$LORA3D_CACHE` (`engine.families.midi.demo_base`): two
   Trainer runs, the VAE as an SDF autoencoder of synthetic A and B primitives (`model.task: vae`), then the
   DiT on synthetic domain-A scenes (`lora.method: full`), saved in the real MIDI folder layout.
2. Synthetic domain-B scenes (meshes + image + id map), prepared with `prepare_dataset`, the path a user's
   data takes.
3. The LoRA fine-tune on B: `profiles/demo-midi.yaml` with `model.pretrained` at that base, through the
   same Trainer.
4. Base and adapted DiT on B's validation scenes (flow-matching loss on a fixed sigma grid, Chamfer distance
   of generated instances; the adapted numbers are the run's own final evaluation), the VAE's
   reconstruction as the floor, and a scene generated into a GLB.

The quick variant (tests) shrinks the base's runs (`QUICK_BASE_SETTINGS`) and the fine-tune (`QUICK_RUN`).

NOTE: a demo is the top layer: it may run the Trainer (the import contract allows `*.demo` modules to).
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from engine.errors import ProfileError
from engine.families.base import Recipe
from engine.families.midi.demo_base import base_prerequisites
from engine.families.midi.demo_vae import reconstruction_chamfer
from engine.families.midi.inference import run_inference
from engine.families.midi.latents import scene_surfaces
from engine.families.midi.options import DEMO_BASE_SETTINGS
from engine.families.midi.scene_data import load_prepared_scene
from engine.families.recipe import resolve_recipe
from engine.profile import apply_overrides, read_yaml
from engine.train.prerequisites import ensure_prerequisite
from engine.train.trainer import Trainer

__all__ = ["DEMO_PROFILE", "QUICK_BASE_SETTINGS", "QUICK_RUN", "demo_recipe", "ensure_demo_base", "run_demo"]

DEMO_PROFILE = Path(__file__).resolve().parents[3] / "profiles" / "demo-midi.yaml"

QUICK_BASE_SETTINGS: dict[str, Any] = {**DEMO_BASE_SETTINGS, "variant": "quick", "points": 512, "image": 32,
                                       "vae_scenes": 8, "vae_steps": 300, "a_scenes": 6, "base_steps": 60}
"""The quick variant's base (tests): fewer, smaller scenes and fewer steps."""

QUICK_RUN: dict[str, Any] = {
    "data.synthetic_train_scenes": 6, "data.synthetic_val_scenes": 2, "data.synthetic_num_samples": 512,
    "data.synthetic_image_size": 32, "data.eval_chamfer_scenes": 2, "data.eval_sample_steps": 4,
    "data.eval_octree_resolution": 16, "train.max_steps": 30,
}
"""The quick variant's changes to `profiles/demo-midi.yaml` (tests)."""

_SIZES: dict[bool, dict[str, Any]] = {False: {"base": DEMO_BASE_SETTINGS, "run": {}},
                                      True: {"base": QUICK_BASE_SETTINGS, "run": QUICK_RUN}}
"""quick -> the base's settings and the profile's overrides."""


def _quarters(say: Callable[[str], None]) -> Callable[[str], None]:
    """`say`, keeping of the builder's every-10-steps progress lines only about one per quarter of the run."""
    def filtered(message: str) -> None:
        match = re.match(r"\s*step (\d+)/(\d+)", message)
        if match:
            step, total = int(match[1]), int(match[2])
            quarter = max(10, round(total / 40) * 10)
            if step % quarter and step != total:
                return
        say(message)

    return filtered


def ensure_demo_base(quick: bool = False, seed: int = 0, console: Console | None = None) -> Path:
    """The cached base folder of the (quick) demo with base seed `seed`, built by two Trainer runs when missing."""
    settings = {**_SIZES[quick]["base"], "seed": seed}
    say = _quarters(console.print) if console is not None else (lambda _: None)
    path = Path()
    for prerequisite in base_prerequisites(settings):
        path = ensure_prerequisite(prerequisite, say)
    return path


def demo_recipe(base: Path, run_dir: Path, quick: bool = False, seed: int = 0) -> Recipe:
    """`profiles/demo-midi.yaml` with `model.pretrained` at `base` (and the quick variant's sizes).

    `seed` is the run's `train.seed`; the domain-B scenes use `seed + 1` (the base's domain-A scenes use `seed`).
    """
    if not DEMO_PROFILE.is_file():
        raise ProfileError(f"{DEMO_PROFILE}: the demo profile is missing. Restore it from the repository (git checkout profiles/).")
    overrides = {**_SIZES[quick]["run"], "model.pretrained": str(base), "model.demo_base": False,
                 "output.dir": str(run_dir), "train.seed": seed, "data.synthetic_seed": seed + 1}
    data = apply_overrides(read_yaml(DEMO_PROFILE), list(overrides.items()))
    return resolve_recipe(data, source=str(DEMO_PROFILE))


def _score_base(recipe: Recipe) -> dict[str, float]:
    """Validation loss and Chamfer of the base DiT on the recipe's validation scenes."""
    family, profile = recipe.family, recipe.profile
    model = family.build_model(recipe).eval()
    _, val = family.build_datasets(recipe)
    indices = list(range(len(val)))
    micro = profile.train.batch_size
    batches = (family.collate([val[i] for i in indices[s : s + micro]]) for s in range(0, len(indices), micro))
    with torch.random.fork_rng(devices=[]):
        return recipe.task.evaluate(model, batches, with_chamfer=True)


def _vae_reconstruction(recipe: Recipe, scenes: list[Path]) -> float:
    """Chamfer to the ground truth of the frozen VAE's own reconstructions: the floor no generated scene can beat."""
    profile = recipe.profile
    vae = recipe.family.load_frozen(recipe).vae
    surfaces = torch.cat([scene_surfaces(load_prepared_scene(folder), None) for folder in scenes])
    return reconstruction_chamfer(vae, surfaces, profile.model.num_tokens, profile.data.eval_octree_resolution)


def run_demo(out_dir: Path | None, console: Console | None = None, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Runs the whole demo; returns base and adapted metrics, the run directory and the GLB path.

    Args:
        out_dir: where the run and the GLB go (default `runs/demo-midi`).
        console: rich console for progress and the result table.
        quick: a much smaller demo (tests).
        seed: seed of the base, the data and the run.
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
    out = Path(out_dir) if out_dir is not None else Path("runs") / "demo-midi"
    started = time.perf_counter()
    console.print("[bold]MIDI demo[/bold]: 1/4 tiny base (built by two training runs once, cached under $LORA3D_CACHE)")
    base = ensure_demo_base(quick, seed, console)
    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    recipe = demo_recipe(base, run_dir, quick, seed)
    profile, family = recipe.profile, recipe.family
    console.print("2/4 synthetic scenes of domain B (cones and tori, tall or flat), prepared once")
    _, val_scenes = family.scene_folders(recipe)
    base_metrics = _score_base(recipe)
    console.print(f"3/4 LoRA fine-tune on domain B: {profile.train.max_steps} steps, rank {profile.lora.r} "
                  f"(base val loss {base_metrics['val_loss']:.4f})")
    evaluations: list[dict[str, float]] = []
    progress = _quarters(console.print)

    def listen(event: dict[str, Any]) -> None:
        if event["type"] == "step":
            progress(f"  step {event['step']}/{event['total_steps']}  loss {event['loss']:.3f}")
        elif event["type"] == "eval":
            evaluations.append(event["metrics"])

    t0 = time.perf_counter()
    result = Trainer(recipe, run_dir=run_dir, listeners=[listen], install_signal_handlers=False).run()
    train_seconds = time.perf_counter() - t0
    adapter = run_dir / "adapter"
    console.print("4/4 base vs adapted on domain B's validation scenes")
    adapted_metrics = evaluations[-1]  # the run's final evaluation, of the weights the adapter holds
    recon_chamfer = _vae_reconstruction(recipe, val_scenes)
    glb = out / "result.glb"
    run_inference(base, adapter, val_scenes[0] / "image.png", val_scenes[0] / "seg.png", glb,
                  steps=profile.data.eval_sample_steps, guidance_scale=profile.data.eval_guidance_scale, seed=seed,
                  octree_resolution=profile.data.eval_octree_resolution, device="cpu", num_tokens=profile.model.num_tokens)
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
        "recon_chamfer": recon_chamfer, "losses": result.losses, "seconds": total, "train_seconds": train_seconds,
        "base_folder": base,
    }
