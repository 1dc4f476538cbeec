"""Provides the seed's data-preparation command line: raw meshes (+ image, id map) to MIDI training data.

Usage (from the repository root):
    python scripts/prepare_data.py --input_dir data/raw_meshes --output_dir data/training_data --num_samples 20480

Exit codes: 0 when every scene was prepared; 1 when some scenes failed (the others are still written,
and each problem is listed with its scene and file); 2 on a bad argument or a missing input folder.
Layouts and conventions: engine/families/midi/prepare.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import engine  # noqa: F401
except ImportError:  # run from a clone without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.errors import Lora3dError
from engine.families.midi.prepare import prepare_dataset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Turn scenes of meshes (OBJ, GLB/glTF, PLY, STL, OFF, DAE, 3MF; optional image.png + seg.png) into MIDI-3D training data.",
        epilog="Exit codes: 0 all scenes prepared, 1 some scenes failed, 2 bad arguments or missing input.",
    )
    parser.add_argument("--input_dir", required=True, help="folder with one sub-folder (or GLB file) per scene")
    parser.add_argument("--output_dir", required=True, help="where prepared scene folders are written")
    parser.add_argument("--num_samples", type=int, default=20480, help="surface samples per instance (default 20480, as MIDI)")
    parser.add_argument("--image_size", type=int, default=512, help="side of the square image and id map (default 512)")
    parser.add_argument("--workers", type=int, default=2, help="parallel processes over scenes (default 2; 1 = in-process)")
    parser.add_argument("--seed", type=int, default=0, help="seed for surface sampling and render cameras")
    parser.add_argument(
        "--allow_pickle_npy",
        action="store_true",
        help="also read TripoSG's pickled .npy surface dicts; this unpickles, so use only with trusted files",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # argparse itself exits 2 with a usage line on bad syntax
    try:
        report = prepare_dataset(
            args.input_dir,
            args.output_dir,
            num_samples=args.num_samples,
            image_size=args.image_size,
            workers=args.workers,
            allow_pickle_npy=args.allow_pickle_npy,
            seed=args.seed,
            progress=True,
        )
    except Lora3dError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
