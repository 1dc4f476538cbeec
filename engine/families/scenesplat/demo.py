"""Provides the built-in SceneSplat demo: a tiny base pretrained on synthetic rooms A, LoRA-adapted to rooms B.

1. The base: a `demo-tiny` PTv3 + segmentation head, trained in full by a plain torch loop on
   domain A, saved as a Pointcept-style checkpoint (`{"epoch", "state_dict"}`, loadable with
   `weights_only=True`) under `$LORA3D_CACHE` (default `~/.cache/lora3d`), keyed by a hash of its
   settings, so later runs reuse it.
2. The adaptation: a profile equal to `profiles/demo-scenesplat.yaml` (with `model.pretrained`
   pointing at the cached base) trained by the engine's own `Trainer` on domain B: LoRA on attention
   and MLP of every stage, plus the segmentation head.
3. The proof: base and adapted mIoU on B's validation rooms, and the trainable-parameter ratio.

Domain B recolours the classes (its floor looks like A's columns, its tables like A's walls), so
the base mislabels B and the adapter recovers.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from engine.families.scenesplat.family import (
    DEMO_TINY_CONFIG,
    SceneSplatFamily,
    SyntheticRoomDataset,
    load_adapter,
    model_inputs,
)
from engine.families.scenesplat.synthetic import SYNTHETIC_CLASSES
from engine.families.scenesplat.task import semseg_loss
from engine.families.scenesplat.transforms import build_transforms

DEMO_PROFILE = Path(__file__).resolve().parents[3] / "profiles" / "demo-scenesplat.yaml"

BASE_SETTINGS: dict[str, Any] = {
    "backbone": DEMO_TINY_CONFIG,
    "domain": "A",
    "scenes": 12,
    "num_points": 2500,
    "grid_size": 0.05,
    "steps": 90,
    "batch_size": 2,
    "lr": 0.004,
    "seed": 0,
    "version": 1,
}
"""How the full demo's base is pretrained (its cache key is a hash of these)."""

QUICK_BASE_SETTINGS: dict[str, Any] = {**BASE_SETTINGS, "scenes": 6, "num_points": 1200, "grid_size": 0.08, "steps": 40}
"""The quick variant for tests."""

LORA_SETTINGS: dict[str, Any] = {"points": 2500, "grid_size": 0.05, "train": 8, "val": 4, "steps": 40, "lr": 0.004}
QUICK_LORA_SETTINGS: dict[str, Any] = {"points": 1200, "grid_size": 0.08, "train": 4, "val": 3, "steps": 16, "lr": 0.006}


def cache_dir() -> Path:
    """`$LORA3D_CACHE`, or `~/.cache/lora3d`."""
    return Path(os.environ.get("LORA3D_CACHE") or Path.home() / ".cache" / "lora3d")


def _settings_key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:12]


def pretrain_base(settings: dict[str, Any], console: Console | None = None) -> dict[str, torch.Tensor]:
    """Trains every parameter of a tiny PTv3 segmentor on synthetic domain A; returns its state dict."""
    from engine.models.ptv3 import PTv3Segmentor

    torch.manual_seed(settings["seed"])
    model = PTv3Segmentor(dict(settings["backbone"]), len(SYNTHETIC_CLASSES))
    data = SyntheticRoomDataset(
        "train", settings["scenes"], domain=settings["domain"], seed=settings["seed"], num_points=settings["num_points"],
        transforms=build_transforms("train", grid_size=settings["grid_size"]), sample_seed=settings["seed"],
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings["lr"], total_steps=settings["steps"], pct_start=0.1)
    rng = np.random.default_rng(settings["seed"])
    model.train()
    per_epoch = max(1, len(data) // settings["batch_size"])
    order = rng.permutation(len(data))
    for step in range(settings["steps"]):
        if step % per_epoch == 0:
            data.set_epoch(step // per_epoch)
            order = rng.permutation(len(data))
        j = (step % per_epoch) * settings["batch_size"]
        batch = data_collate([data[int(i)] for i in order[j : j + settings["batch_size"]]])
        loss = semseg_loss(model(model_inputs(batch)), batch["segment"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if console is not None and (step + 1) % 10 == 0:
            console.print(f"  base pretraining on domain A: step {step + 1}/{settings['steps']}, loss {float(loss.detach()):.3f}")
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def data_collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    from engine.families.scenesplat.data import collate_scenes

    return collate_scenes(samples)


def ensure_demo_base(quick: bool = False, console: Console | None = None) -> Path:
    """The cached demo base checkpoint, pretrained first when it is missing.

    Returns:
        `$LORA3D_CACHE/scenesplat-demo-base-<hash>.pth`: `{"epoch": steps, "state_dict": ...}` with
        Pointcept's `backbone.*` / `seg_head.*` keys.
    """
    settings = QUICK_BASE_SETTINGS if quick else BASE_SETTINGS
    path = cache_dir() / f"scenesplat-demo-base-{_settings_key(settings)}.pth"
    if path.is_file():
        return path
    if console is not None:
        console.print(f"pretraining the demo's tiny base on synthetic rooms A (cached at {path}) ...")
    # Pretraining must not move the caller's RNG (a run that finds the base cached must match one that built it).
    with torch.random.fork_rng(devices=[]):
        state = pretrain_base(settings, console)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"epoch": settings["steps"], "state_dict": state}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def demo_profile_data(base: Path, run_dir: Path, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """The demo's profile as plain data: `profiles/demo-scenesplat.yaml` with the base and run dir filled in."""
    import yaml

    data = yaml.safe_load(DEMO_PROFILE.read_text()) if DEMO_PROFILE.is_file() else _fallback_profile()
    data["model"]["pretrained"] = str(base)
    data["model"]["demo_base"] = False
    data["output"] = {**data.get("output", {}), "dir": str(run_dir), "tensorboard": False}
    data.setdefault("train", {})["seed"] = seed
    if quick:
        s = QUICK_LORA_SETTINGS
        data["data"].update(grid_size=s["grid_size"], synthetic_points=s["points"], synthetic_train=s["train"],
                            synthetic_val=s["val"])
        data["train"].update(max_steps=s["steps"], lr=s["lr"])
    return data


def _fallback_profile() -> dict[str, Any]:
    """The demo profile when the repository's profiles/ folder is not there (an installed wheel)."""
    s = LORA_SETTINGS
    return {
        "schema_version": 1,
        "name": "demo-scenesplat",
        "model": {"family": "scenesplat", "task": "semseg", "backbone": "demo-tiny", "demo_base": True},
        "lora": {"r": 8, "alpha": 16, "target_modules": ["attn", "mlp"], "encoder_only": False},
        "data": {"grid_size": s["grid_size"], "synthetic_domain": "B", "synthetic_train": s["train"],
                 "synthetic_val": s["val"], "synthetic_points": s["points"]},
        "train": {"max_steps": s["steps"], "batch_size": 2, "lr": s["lr"], "warmup_steps": 2, "device": "cpu"},
        "output": {"dir": "runs/demo-scenesplat", "tensorboard": False},
    }


@torch.no_grad()
def evaluate_model(family: SceneSplatFamily, model: torch.nn.Module, profile: Any) -> dict[str, float]:
    """The family's validation metrics for `model` on the profile's validation split."""
    _, val = family.build_datasets(profile)
    val.set_epoch(0)
    model.eval()
    batches = (family.collate([val[i]]) for i in range(len(val)))
    return family.evaluate(model, batches, profile)


def run_demo(out_dir: Path | None = None, console: Console | None = None, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Runs the whole demo and prints base vs adapted mIoU on domain B.

    Args:
        out_dir: run directory (default `runs/demo-scenesplat-<time>`).
        console: where to print (default: a new rich console).
        quick: the small variant (tests): fewer, smaller rooms and fewer steps.
        seed: the LoRA run's `train.seed`.

    Returns:
        `{"base_miou", "adapted_miou", "base_metrics", "adapted_metrics", "trainable_params",
        "total_params", "trainable_ratio", "seconds", "run_dir", "base_checkpoint"}`.
    """
    from engine.profile.load import save_profile, validate_profile
    from engine.train.trainer import Trainer

    console = console or Console(highlight=False)
    start = time.perf_counter()
    run_dir = Path(out_dir) if out_dir is not None else Path("runs") / time.strftime("demo-scenesplat-%Y%m%d-%H%M%S")
    base = ensure_demo_base(quick, console)
    profile = validate_profile(demo_profile_data(base, run_dir, quick, seed), source="demo-scenesplat")
    family = SceneSplatFamily()

    base_model = family.build_model(profile)
    base_metrics = evaluate_model(family, base_model, profile)
    console.print(f"base model on domain B: mIoU {base_metrics['miou']:.3f}; LoRA fine-tuning on B into {run_dir} ...")

    def progress(event: dict[str, Any]) -> None:
        if event["type"] == "step" and (event["step"] % 10 == 0 or event["step"] == event["total_steps"]):
            console.print(f"  step {event['step']}/{event['total_steps']}  loss {event['loss']:.3f}")

    trainer = Trainer(profile, run_dir=run_dir, family=family, listeners=[progress], install_signal_handlers=False)
    trainer.run()
    save_profile(profile, run_dir / "profile.yaml", header="The demo's profile (profiles/demo-scenesplat.yaml + the cached base).")

    adapted = family.inject_lora(family.build_model(profile), profile)
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    total = sum(p.numel() for p in adapted.parameters())
    adapted = family.build_model(profile)
    load_adapter(adapted, run_dir / "adapter")
    adapted_metrics = evaluate_model(family, adapted, profile)
    seconds = time.perf_counter() - start

    table = Table(title="SceneSplat demo: synthetic rooms A -> B", title_justify="left")
    for col in ("model", "mIoU (B val)", "mAcc", "allAcc"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, m in (("base (trained on A)", base_metrics), ("base + LoRA (adapted to B)", adapted_metrics)):
        table.add_row(name, f"{m['miou']:.3f}", f"{m['macc']:.3f}", f"{m['allacc']:.3f}")
    console.print(table)
    console.print(
        f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%: LoRA + segmentation head); "
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
