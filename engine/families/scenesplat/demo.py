"""Provides the built-in SceneSplat demo: a tiny base pretrained on synthetic rooms A, LoRA-adapted to rooms B.

1. The base: a `demo-tiny` PTv3 + segmentation head with every parameter trained on domain A by the
   engine's Trainer (`lora.method: full`), saved as a Pointcept-style checkpoint (`{"epoch", "state_dict"}`,
   loadable with `weights_only=True`) under `$LORA3D_CACHE`, keyed by a hash of its settings, so later runs
   reuse it (a recipe prerequisite, `SceneSplatFamily.prerequisites`).
2. The adaptation: `profiles/demo-scenesplat.yaml` (with `model.pretrained` at the cached base) trained by
   the same Trainer on domain B: LoRA on attention and MLP of every stage, plus the segmentation head.
3. The proof: base and adapted mIoU on B's validation rooms, and the trainable-parameter ratio.

Domain B recolours the classes (its floor looks like A's columns, its tables like A's walls), so
the base mislabels B and the adapter recovers.

The runner (`SegmentationDemo`) is shared with the Sonata demo, which differs only in its profile, base
settings, adapter loader and thread count.

NOTE: a demo is the top layer: it may run the Trainer (the import contract allows `*.demo` modules to).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from engine.families.base import Prerequisite, Recipe
from engine.families.recipe import resolve_recipe
from engine.families.scenesplat.adapters import load_adapter
from engine.families.scenesplat.family import DEMO_BASE_SETTINGS, demo_base_prerequisite
from engine.lora.inject import apply_lora_spec
from engine.profile import read_yaml, save_profile
from engine.train.prerequisites import ensure_prerequisite
from engine.train.trainer import Trainer

PROFILES = Path(__file__).resolve().parents[3] / "profiles"


@dataclass(frozen=True)
class SegmentationDemo:
    """A PTv3 segmentation demo: a tiny base trained in full on synthetic rooms A, LoRA-adapted to rooms B.

    Attributes:
        family: the family's name: its demo base's cache file and the default run directory are named for it.
        title: the results table's title.
        profile: the LoRA run's profile (`model.pretrained` and `output.dir` are filled in).
        base_settings, quick_base_settings: the base's pretraining (`demo_base_profile`), full and quick (tests).
        quick_run: the quick variant's LoRA run: `points`, `grid_size`, `train`, `val`, `steps`, optional `lr`.
        load_adapter: the family's `(base model, adapter folder) -> adapted model`.
        one_thread: run on one CPU thread (a tiny model gains nothing from more, and loses much under load).
        trained: what the trainable parameters are, for the summary line.
    """

    family: str
    title: str
    profile: Path
    base_settings: dict[str, Any]
    quick_base_settings: dict[str, Any]
    quick_run: dict[str, Any]
    load_adapter: Callable[[torch.nn.Module, Path], torch.nn.Module]
    one_thread: bool = False
    trained: str = "LoRA + segmentation head"

    def base_prerequisite(self, quick: bool = False) -> Prerequisite:
        """The demo base (full or quick settings) as a prerequisite the Trainer builds once."""
        return demo_base_prerequisite(self.quick_base_settings if quick else self.base_settings, self.family)

    def ensure_base(self, quick: bool = False, console: Console | None = None) -> Path:
        """The cached demo base checkpoint, pretrained first when it is missing."""
        say = console.print if console is not None else (lambda _: None)
        return ensure_prerequisite(self.base_prerequisite(quick), say)

    def profile_data(self, base: Path, run_dir: Path, quick: bool = False, seed: int = 0) -> dict[str, Any]:
        """The demo's profile as plain data, with the base and run dir filled in."""
        data = read_yaml(self.profile)
        data["model"]["pretrained"] = str(base)
        data["model"]["demo_base"] = False
        data["output"] = {**data.get("output", {}), "dir": str(run_dir), "tensorboard": False}
        data.setdefault("train", {})["seed"] = seed
        if quick:
            s = self.quick_run
            data["data"].update(grid_size=s["grid_size"], synthetic_points=s["points"], synthetic_train=s["train"],
                                synthetic_val=s["val"])
            data["train"].update(max_steps=s["steps"], **({"lr": s["lr"]} if "lr" in s else {}))
        return data

    def run(self, out_dir: Path | None = None, console: Console | None = None, quick: bool = False,
            seed: int = 0) -> dict[str, Any]:
        """Runs the whole demo and prints base vs adapted mIoU on domain B.

        Args:
            out_dir: run directory (default `runs/demo-<family>-<time>`).
            console: where to print (default: a new rich console).
            quick: the small variant (tests): fewer, smaller rooms and fewer steps.
            seed: the LoRA run's `train.seed`.

        Returns:
            `{"base_miou", "adapted_miou", "base_metrics", "adapted_metrics", "trainable_params",
            "total_params", "trainable_ratio", "seconds", "run_dir", "base_checkpoint"}`.
        """
        console = console or Console(highlight=False)
        if not self.one_thread:
            return self._run(out_dir, console, quick, seed)
        threads = torch.get_num_threads()
        # The tiny model's ops are too small to split: more intra-op threads only add synchronisation, which on a
        # loaded machine made the Sonata demo 10x slower (42 s on 1 thread vs 605 s on 2 at load 8-10), same numbers.
        torch.set_num_threads(1)
        console.print(f"(running on 1 CPU thread of {threads}: the demo's tiny model gains nothing from more)")
        try:
            return self._run(out_dir, console, quick, seed)
        finally:
            torch.set_num_threads(threads)

    def _run(self, out_dir: Path | None, console: Console, quick: bool, seed: int) -> dict[str, Any]:
        start = time.perf_counter()
        run_dir = Path(out_dir) if out_dir is not None else Path("runs") / time.strftime(f"demo-{self.family}-%Y%m%d-%H%M%S")
        base = self.ensure_base(quick, console)
        recipe = resolve_recipe(self.profile_data(base, run_dir, quick, seed), f"demo-{self.family}")
        family = recipe.family

        base_metrics = evaluate_model(recipe, family.build_model(recipe))
        console.print(f"base model on domain B: mIoU {base_metrics['miou']:.3f}; LoRA fine-tuning on B into {run_dir} ...")

        def progress(event: dict[str, Any]) -> None:
            if event["type"] == "step" and (event["step"] % 10 == 0 or event["step"] == event["total_steps"]):
                console.print(f"  step {event['step']}/{event['total_steps']}  loss {event['loss']:.3f}")

        Trainer(recipe, run_dir=run_dir, listeners=[progress], install_signal_handlers=False).run()
        profile_name = self.profile.relative_to(PROFILES.parent)
        save_profile(recipe.profile, run_dir / "profile.yaml",
                     header=f"The demo's profile ({profile_name} + the cached base).")

        adapted = apply_lora_spec(family.build_model(recipe), recipe.lora)
        trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
        total = sum(p.numel() for p in adapted.parameters())
        adapted = self.load_adapter(family.build_model(recipe), run_dir / "adapter")
        adapted_metrics = evaluate_model(recipe, adapted)
        seconds = time.perf_counter() - start

        table = Table(title=self.title, title_justify="left")
        for col in ("model", "mIoU (B val)", "mAcc", "allAcc"):
            table.add_column(col, justify="left" if col == "model" else "right")
        for name, m in (("base (trained on A)", base_metrics), ("base + LoRA (adapted to B)", adapted_metrics)):
            table.add_row(name, f"{m['miou']:.3f}", f"{m['macc']:.3f}", f"{m['allacc']:.3f}")
        console.print(table)
        console.print(
            f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%: {self.trained}); "
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


@torch.no_grad()
def evaluate_model(recipe: Recipe, model: torch.nn.Module) -> dict[str, float]:
    """The task's validation metrics for `model` on the recipe's validation split."""
    family = recipe.family
    _, val = family.build_datasets(recipe)
    val.set_epoch(0)
    model.eval()
    return recipe.task.evaluate(model, (family.collate([val[i]]) for i in range(len(val))))


DEMO = SegmentationDemo(
    family="scenesplat",
    title="SceneSplat demo: synthetic rooms A -> B",
    profile=PROFILES / "demo-scenesplat.yaml",
    base_settings=DEMO_BASE_SETTINGS,
    quick_base_settings={**DEMO_BASE_SETTINGS, "scenes": 6, "num_points": 1200, "grid_size": 0.08, "steps": 40},
    quick_run={"points": 1200, "grid_size": 0.08, "train": 4, "val": 3, "steps": 16, "lr": 0.006},
    load_adapter=load_adapter,
)
"""The SceneSplat demo; `run_demo` (the family's ENTRY) and `ensure_demo_base` are its methods."""

run_demo = DEMO.run
ensure_demo_base = DEMO.ensure_base
