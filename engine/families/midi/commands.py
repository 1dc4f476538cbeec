"""Provides the MIDI family's own `lora3d` subcommands: `prepare-mesh` and `infer`."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console


def prepare_mesh_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input_dir", "--input-dir", required=True)
    p.add_argument("--output_dir", "--output-dir", required=True)
    p.add_argument("--num_samples", "--num-samples", type=int, default=20480)
    p.add_argument("--image_size", "--image-size", type=int, default=512)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--allow_pickle_npy", action="store_true", help="read TripoSG pickled .npy dicts (unpickles!)")
    p.add_argument("--seed", type=int, default=0, help="seed for surface sampling and render cameras")


def cmd_prepare_mesh(args: argparse.Namespace) -> int:
    from engine.families.midi.prepare import prepare_dataset  # lazy: start-up time

    report = prepare_dataset(
        args.input_dir, args.output_dir, num_samples=args.num_samples, image_size=args.image_size,
        workers=args.workers, allow_pickle_npy=args.allow_pickle_npy, seed=args.seed,
    )
    return 1 if report.failed else 0


def infer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pretrained", required=True, help="MIDI-3D or TripoSG folder (model_index.json)")
    p.add_argument("--lora_path", "--lora-path", help="adapter folder or file (optional)")
    p.add_argument("--rgb_image", "--rgb-image", required=True)
    p.add_argument("--seg_image", "--seg-image", required=True)
    p.add_argument("--output", required=True, help="result .glb/.obj/.ply")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance_scale", "--guidance-scale", type=float, default=7.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--octree_resolution", "--octree-resolution", type=int, default=128)
    p.add_argument("--device", default="auto")


def cmd_infer(args: argparse.Namespace) -> int:
    from engine.families.midi.inference import run_inference  # lazy: diffusers and the models take seconds

    out = run_inference(
        pretrained=Path(args.pretrained), lora_path=Path(args.lora_path) if args.lora_path else None,
        rgb_image=Path(args.rgb_image), seg_image=Path(args.seg_image), output=Path(args.output),
        steps=args.steps, guidance_scale=args.guidance_scale, seed=args.seed,
        octree_resolution=args.octree_resolution, device=args.device,
    )
    Console(highlight=False, soft_wrap=True).print(f"scene written to {out}")
    return 0
