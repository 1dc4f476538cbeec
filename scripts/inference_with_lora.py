"""Provides the seed's inference command line: a scene image + instance segmentation -> a 3D scene file.

Usage (from the repository root):
    python scripts/inference_with_lora.py --lora_path outputs/lora_finetune/adapter \
        --rgb_image test.png --seg_image mask.png --output result.glb --pretrained weights/MIDI-3D

`--lora_path` takes the run's `adapter/` folder, an adapter `.safetensors`/`.pth` file, or a merged
transformer (`lora3d merge`). Without `--pretrained` the demo's cached tiny base is used when
`lora3d demo midi` has built it. Exit codes as the CLI: 0 done, 2 bad input (the message says which file
and how to fix it). Same as `lora3d infer`; engine/families/midi/inference.py does the work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import engine  # noqa: F401
except ImportError:  # run from a clone without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.errors import CheckpointError, Lora3dError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Generate a 3D scene (GLB, OBJ or PLY) from an image and its instance segmentation with MIDI-3D + LoRA.",
        epilog="Exit codes: 0 scene written, 2 bad arguments or inputs.",
    )
    parser.add_argument("--lora_path", help="adapter folder/file from training, or a merged transformer (optional)")
    parser.add_argument("--rgb_image", required=True, help="the scene image (PNG/JPEG)")
    parser.add_argument("--seg_image", required=True, help="instance id map: 0 background, 1..n instances")
    parser.add_argument("--output", default="result.glb", help="result .glb, .obj or .ply (default result.glb)")
    parser.add_argument("--pretrained", help="MIDI-3D pipeline folder (default: the demo's cached tiny base)")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps (default 50, as MIDI)")
    parser.add_argument("--guidance_scale", type=float, default=7.0, help="CFG scale (default 7.0, as MIDI)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--octree_resolution", type=int, default=128, help="marching-cubes cells per axis")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    return parser


def default_pretrained() -> Path:
    """The demo's cached tiny base, or a CheckpointError telling to pass --pretrained."""
    from engine.cache import cache_root

    found = sorted(cache_root().glob("midi-demo-base-v*/model_index.json"))
    if not found:
        raise CheckpointError(
            "--pretrained: no base model given, got none and no demo base in $LORA3D_CACHE. Pass "
            "`--pretrained PATH/TO/MIDI-3D` (a local folder with model_index.json), or run `lora3d demo midi` first."
        )
    full = [p for p in found if "-quick" not in p.parent.name]
    return (full or found)[0].parent


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # argparse itself exits 2 with a usage line on bad syntax
    from engine.families.midi.inference import run_inference

    try:
        pretrained = Path(args.pretrained) if args.pretrained else default_pretrained()
        out = run_inference(
            pretrained=pretrained, lora_path=Path(args.lora_path) if args.lora_path else None,
            rgb_image=Path(args.rgb_image), seg_image=Path(args.seg_image), output=Path(args.output),
            steps=args.steps, guidance_scale=args.guidance_scale, seed=args.seed,
            octree_resolution=args.octree_resolution, device=args.device,
        )
    except Lora3dError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"scene written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
