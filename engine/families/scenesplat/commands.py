"""Provides the SceneSplat family's own `lora3d` subcommands: `import-3dgs`."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console


def import_3dgs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help=".ply file or folder of .ply files")
    p.add_argument("dest", help="scene folder (file mode) or dataset split folder (folder mode)")
    p.add_argument("--labels", help="optional .npy of per-point labels (file mode)")
    p.add_argument("--overwrite", action="store_true", help="replace existing scene folders (each one atomically)")


def cmd_import_3dgs(args: argparse.Namespace) -> int:
    from engine.families.scenesplat.ply_import import (  # lazy: start-up time
        import_3dgs_folder,
        import_3dgs_ply,
    )

    src, dest = Path(args.src), Path(args.dest)
    if src.is_dir():
        summary = import_3dgs_folder(src, dest, overwrite=args.overwrite)
    else:
        summary = import_3dgs_ply(src, dest, labels=Path(args.labels) if args.labels else None,
                                  overwrite=args.overwrite)
    Console(highlight=False, soft_wrap=True).print(summary)
    return 0
