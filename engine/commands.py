"""Provides the CLI commands that delegate to a family: data-check, merge, import-3dgs, prepare-mesh, infer, demo."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from engine.errors import CheckpointError


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def cmd_data_check(args: argparse.Namespace) -> int:
    from engine.families.registry import get_family
    from engine.profile import load_profile

    profile = load_profile(args.profile, args.set)
    report = get_family(profile.model.family).data_check(profile)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        report.render(_console())
    return 0 if not report.to_dict().get("problems") else 1


def _run_profile(run_dir: Path):
    from engine.profile import load_profile

    resolved = run_dir / "profile.resolved.yaml"
    if not resolved.exists():
        raise CheckpointError(
            f"{run_dir}: not a lora3d run directory (no profile.resolved.yaml). Pass the folder `lora3d train` wrote."
        )
    return load_profile(resolved)


def cmd_merge(args: argparse.Namespace) -> int:
    from engine.families.registry import get_family

    run_dir = Path(args.run_dir)
    profile = _run_profile(run_dir)
    adapter = run_dir / "adapter"
    if not adapter.is_dir():
        raise CheckpointError(f"{run_dir}: has no adapter/ yet (the run has not completed). Finish it with --resume first.")
    family = get_family(profile.model.family)
    if getattr(args, "bare", False) and profile.model.family != "scenesplat":
        raise CheckpointError(
            f"`--bare`: only scenesplat merges have a Pointcept wrapper to leave out, got family "
            f"{profile.model.family!r}. Drop --bare (this family's .pth is a bare state dict already)."
        )
    options = {"bare": True} if getattr(args, "bare", False) else {}
    out = family.merge_adapter(profile, adapter, Path(args.out), **options)
    _console().print(f"merged checkpoint written to {out}")
    return 0


def cmd_import_3dgs(args: argparse.Namespace) -> int:
    from engine.families.scenesplat.ply_import import import_3dgs_folder, import_3dgs_ply

    src, dest = Path(args.src), Path(args.dest)
    if src.is_dir():
        summary = import_3dgs_folder(src, dest)
    else:
        summary = import_3dgs_ply(src, dest, labels=Path(args.labels) if args.labels else None)
    _console().print(summary)
    return 0


def cmd_prepare_mesh(args: argparse.Namespace) -> int:
    from engine.families.midi.prepare import prepare_dataset

    report = prepare_dataset(
        args.input_dir, args.output_dir, num_samples=args.num_samples, image_size=args.image_size,
        workers=args.workers, allow_pickle_npy=args.allow_pickle_npy,
    )
    return 1 if report.failed else 0


def cmd_infer(args: argparse.Namespace) -> int:
    from engine.families.midi.inference import run_inference

    out = run_inference(
        pretrained=Path(args.pretrained), lora_path=Path(args.lora_path) if args.lora_path else None,
        rgb_image=Path(args.rgb_image), seg_image=Path(args.seg_image), output=Path(args.output),
        steps=args.steps, guidance_scale=args.guidance_scale, seed=args.seed,
        octree_resolution=args.octree_resolution, device=args.device,
    )
    _console().print(f"scene written to {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import importlib

    demo = importlib.import_module(f"engine.families.{args.family}.demo")
    demo.run_demo(Path(args.out) if args.out else None, console=_console())
    return 0
