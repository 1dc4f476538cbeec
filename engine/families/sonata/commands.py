"""Provides the Sonata family's own `lora3d` subcommand: `export-pointcept` (a run as a DefaultLORASegmentorV2 file)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console


def export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a sonata run directory (holds profile.resolved.yaml and adapter/)")
    p.add_argument("--out", required=True, help="the checkpoint to write, e.g. model_last.pth")
    p.add_argument("--adapter", help="adapter folder to export (default: RUN_DIR/adapter; e.g. RUN_DIR/adapter-best)")


def cmd_export_pointcept(args: argparse.Namespace) -> int:
    # lazy: the family imports torch and PEFT; `lora3d --help` must stay fast
    from engine.errors import CheckpointError
    from engine.families.recipe import load_recipe
    from engine.families.sonata.adapters import export_lora_segmentor

    run_dir = Path(args.run_dir)
    resolved = run_dir / "profile.resolved.yaml"
    if not resolved.is_file():
        raise CheckpointError(f"{run_dir}: not a lora3d run directory (no profile.resolved.yaml). Pass the folder "
                              "`lora3d train` wrote.")
    recipe = load_recipe(resolved)
    if recipe.family.name != "sonata":
        raise CheckpointError(f"{run_dir}: `export-pointcept` exports sonata runs, got a {recipe.family.name} run. "
                              "Use `lora3d merge` for it.")
    adapter = Path(args.adapter) if args.adapter else run_dir / "adapter"
    if not adapter.is_dir():
        raise CheckpointError(f"{adapter}: no adapter folder (the run has not completed). Finish it with --resume first.")
    out = export_lora_segmentor(recipe.family.load_adapted(recipe, adapter), Path(args.out))
    Console(highlight=False, soft_wrap=True).print(
        f"wrote {out}: DefaultLORASegmentorV2 layout, loads with Pointcept's tester (`--options weight={out}`) or "
        "`model.load_state_dict(torch.load(path)['state_dict'])`")
    return 0
