"""Provides the built-in Sonata demo: a tiny PT-v3m2 base pretrained on synthetic rooms A, LoRA-adapted to rooms B.

1. The base: a `demo-tiny` PT-v3m2 with the concatenated multi-level head (Concerto's `enc_mode`), every
   parameter trained on domain A by the engine's Trainer (`lora.method: full`), saved as Pointcept's
   trainer does (`{"epoch", "state_dict"}`, `weights_only=True` loads it) under `$LORA3D_CACHE`, keyed by a
   hash of its settings (a recipe prerequisite, `SonataFamily.prerequisites`).
2. The adaptation: `profiles/sonata/demo.yaml` (preset `attn+mlp`: rank 8, alpha 16, dropout 0.1) trained by
   the same Trainer on domain B, with the head; losses cross-entropy + Lovász, as Pointcept's configs.
3. The proof: base and adapted mIoU on B's validation rooms, and the trainable-parameter ratio.

The rooms are SceneSplat's synthetic rooms read as Sonata reads a scan (coord, colour, normal): domain B
recolours the classes (its floor grey like A's columns, its tables white like A's walls), so the base,
which leans on colour, mislabels B and the adapter recovers.

NOTE: a demo is the top layer: it may run the Trainer (the import contract allows `*.demo` modules to).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from engine.families.base import Prerequisite
from engine.families.recipe import resolve_recipe
from engine.families.scenesplat.demo import evaluate_model
from engine.families.scenesplat.family import demo_base_path, demo_base_profile, export_base
from engine.families.sonata.adapters import load_adapter
from engine.families.sonata.family import DEMO_BASE_SETTINGS
from engine.lora.inject import apply_lora_spec
from engine.profile import read_yaml, save_profile
from engine.train.prerequisites import ensure_prerequisite
from engine.train.trainer import Trainer

DEMO_PROFILE = Path(__file__).resolve().parents[3] / "profiles" / "sonata" / "demo.yaml"

QUICK_BASE_SETTINGS: dict[str, Any] = {**DEMO_BASE_SETTINGS, "scenes": 6, "num_points": 1500, "grid_size": 0.07,
                                       "steps": 50}
"""The quick variant's base (tests)."""

QUICK_LORA_SETTINGS: dict[str, Any] = {"points": 1500, "grid_size": 0.07, "train": 4, "val": 3, "steps": 20}
"""The quick variant's LoRA run (tests): smaller rooms, fewer steps."""


def base_prerequisite(quick: bool = False) -> Prerequisite:
    """The demo base (full or quick settings) as a prerequisite the Trainer builds once."""
    settings = QUICK_BASE_SETTINGS if quick else DEMO_BASE_SETTINGS
    return Prerequisite(demo_base_path(settings, "sonata"), demo_base_profile(settings, "sonata"), export_base,
                        "the demo's tiny Sonata base (every parameter trained on synthetic rooms A)")


def ensure_demo_base(quick: bool = False, console: Console | None = None) -> Path:
    """The cached demo base checkpoint, pretrained first when it is missing."""
    say = console.print if console is not None else (lambda _: None)
    return ensure_prerequisite(base_prerequisite(quick), say)


def demo_profile_data(base: Path, run_dir: Path, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """The demo's profile as plain data: `profiles/sonata/demo.yaml` with the base and run dir filled in."""
    data = read_yaml(DEMO_PROFILE)
    data["model"]["pretrained"] = str(base)
    data["model"]["demo_base"] = False
    data["output"] = {**data.get("output", {}), "dir": str(run_dir), "tensorboard": False}
    data.setdefault("train", {})["seed"] = seed
    if quick:
        s = QUICK_LORA_SETTINGS
        data["data"].update(grid_size=s["grid_size"], synthetic_points=s["points"], synthetic_train=s["train"],
                            synthetic_val=s["val"])
        data["train"].update(max_steps=s["steps"])
    return data


def run_demo(out_dir: Path | None = None, console: Console | None = None, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Runs the whole demo and prints base vs adapted mIoU on domain B.

    Args:
        out_dir: run directory (default `runs/demo-sonata-<time>`).
        console: where to print (default: a new rich console).
        quick: the small variant (tests): fewer, smaller rooms and fewer steps.
        seed: the LoRA run's `train.seed`.

    Returns:
        `{"base_miou", "adapted_miou", "base_metrics", "adapted_metrics", "trainable_params",
        "total_params", "trainable_ratio", "seconds", "run_dir", "base_checkpoint"}`.
    """
    console = console or Console(highlight=False)
    threads = torch.get_num_threads()
    # The tiny model's ops are too small to split: more intra-op threads only add synchronisation, which on a
    # loaded machine made the demo 10x slower (42 s on 1 thread vs 605 s on 2 at load 8-10), same numbers.
    torch.set_num_threads(1)
    console.print(f"(running on 1 CPU thread of {threads}: the demo's tiny model gains nothing from more)")
    try:
        return _run(out_dir, console, quick, seed)
    finally:
        torch.set_num_threads(threads)


def _run(out_dir: Path | None, console: Console, quick: bool, seed: int) -> dict[str, Any]:
    start = time.perf_counter()
    run_dir = Path(out_dir) if out_dir is not None else Path("runs") / time.strftime("demo-sonata-%Y%m%d-%H%M%S")
    base = ensure_demo_base(quick, console)
    recipe = resolve_recipe(demo_profile_data(base, run_dir, quick, seed), "demo-sonata")
    family = recipe.family

    base_metrics = evaluate_model(recipe, family.build_model(recipe))
    console.print(f"base model on domain B: mIoU {base_metrics['miou']:.3f}; LoRA fine-tuning on B into {run_dir} ...")

    def progress(event: dict[str, Any]) -> None:
        if event["type"] == "step" and (event["step"] % 10 == 0 or event["step"] == event["total_steps"]):
            console.print(f"  step {event['step']}/{event['total_steps']}  loss {event['loss']:.3f}")

    Trainer(recipe, run_dir=run_dir, listeners=[progress], install_signal_handlers=False).run()
    save_profile(recipe.profile, run_dir / "profile.yaml",
                 header="The demo's profile (profiles/sonata/demo.yaml + the cached base).")

    adapted = apply_lora_spec(family.build_model(recipe), recipe.lora)
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    total = sum(p.numel() for p in adapted.parameters())
    adapted = load_adapter(family.build_model(recipe), run_dir / "adapter")
    adapted_metrics = evaluate_model(recipe, adapted)
    seconds = time.perf_counter() - start

    table = Table(title="Sonata demo (PT-v3m2): synthetic rooms A -> B", title_justify="left")
    for col in ("model", "mIoU (B val)", "mAcc", "allAcc"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, m in (("base (trained on A)", base_metrics), ("base + LoRA (adapted to B)", adapted_metrics)):
        table.add_row(name, f"{m['miou']:.3f}", f"{m['macc']:.3f}", f"{m['allacc']:.3f}")
    console.print(table)
    console.print(
        f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%: LoRA + head); "
        f"adapter in {run_dir / 'adapter'}; {seconds:.0f} s"
    )
    return {
        "base_miou": base_metrics["miou"],
        "adapted_miou": adapted_metrics["miou"],
        "base_metrics": base_metrics,
        "adapted_metrics": adapted_metrics,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_ratio": trainable / total,
        "seconds": seconds,
        "run_dir": str(run_dir),
        "base_checkpoint": str(base),
    }
