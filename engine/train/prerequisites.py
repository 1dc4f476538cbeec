"""Provides the builder of a recipe's prerequisites: cached files one training run makes (a demo's base).

`lora3d train` passes `ensure_prerequisites` to the Trainer as its `prepare` step (so the progress lands in
the run's events), and the demos call it before they evaluate the base.

Each missing prerequisite is built by the same Trainer every run uses, in a temporary run directory under
the cache root, then written atomically to its path; a prerequisite of a prerequisite is built first.
Building never moves the caller's random state, so a run that finds the file cached equals one that built it.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from engine.atomic import atomic_file
from engine.cache import cache_root
from engine.families.base import Prerequisite, Recipe
from engine.families.recipe import resolve_recipe
from engine.train.trainer import Trainer


def ensure_prerequisite(prerequisite: Prerequisite, say: Callable[[str], None] = lambda _: None) -> Path:
    """Builds `prerequisite` unless its file exists; returns its path."""
    if prerequisite.path.exists():
        return prerequisite.path
    say(f"building {prerequisite.description}, once (cached at {prerequisite.path})")
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".prerequisite-", dir=root) as tmp:
        data = copy.deepcopy(dict(prerequisite.profile))
        data["output"] = {"dir": str(Path(tmp) / "run"), "tensorboard": False}
        recipe = resolve_recipe(data, f"<{prerequisite.description}>")
        with torch.random.fork_rng(devices=[]):
            trainer = Trainer(recipe, install_signal_handlers=False,
                              listeners=[lambda event: _progress(event, say)])
            trainer.run()
        model = trainer.accelerator.unwrap_model(trainer.model)
        with atomic_file(prerequisite.path) as staged:
            prerequisite.export(model, recipe, staged)
    return prerequisite.path


def ensure_prerequisites(recipe: Recipe, say: Callable[[str], None] = lambda _: None) -> None:
    """Builds every missing prerequisite of `recipe`."""
    for prerequisite in recipe.family.prerequisites(recipe):
        ensure_prerequisite(prerequisite, say)


def _progress(event: dict, say: Callable[[str], None]) -> None:
    if event.get("type") == "step" and (event["step"] % 10 == 0 or event["step"] == event.get("total_steps")):
        say(f"  step {event['step']}/{event['total_steps']}  loss {event['loss']:.3f}")
