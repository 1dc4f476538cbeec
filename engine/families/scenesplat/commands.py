"""Provides the SceneSplat family's own `lora3d` subcommands: `import-3dgs`, `eval` and `predict`.

`eval` and `predict` take a run directory first (`RUN_DIR`): a family that declares commands of the same
names gets them dispatched by the run's family (engine/cli.py).
"""

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


def _run_arguments(p: argparse.ArgumentParser) -> None:
    """What `eval` and `predict` share: the run, the adapters, how scenes run."""
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help="run directory (its profile.resolved.yaml and adapter/), an adapter folder in one, or a profile")
    p.add_argument("--adapter", action="append", default=[], metavar="PATH",
                   help="adapter folder to load on the same base (repeatable; default: the run's adapter/)")
    p.add_argument("--fragments", action="store_true",
                   help="Pointcept's test-mode fragments: every Gaussian predicted from its own features "
                   "(as many passes as the fullest voxel has Gaussians)")
    p.add_argument("--rotations", type=int, default=1, metavar="N",
                   help="test-time augmentation: N views turned about z, scores averaged (default 1)")
    p.add_argument("--max-points", type=int, metavar="N",
                   help="voxels per forward pass (default: what the inference memory budget allows)")
    p.add_argument("--memory-gb", type=float, metavar="GB",
                   help="memory budget of the forward passes (default: the GPU's memory, or host RAM less 2 GB)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def eval_arguments(p: argparse.ArgumentParser) -> None:
    _run_arguments(p)
    data = p.add_mutually_exclusive_group()
    data.add_argument("--split", help="another split folder of `data.root` (e.g. test); default: the run's validation split")
    data.add_argument("--scenes", metavar="PATH", help="a scene folder or a folder of scene folders")
    base = p.add_mutually_exclusive_group()
    base.add_argument("--no-base", action="store_true", help="leave the base model out of the table")
    base.add_argument("--base", action="store_true", help="include the base even without a trained head for these classes")
    p.add_argument("--no-training-metrics", action="store_true",
                   help="skip the training-style evaluation (voxel points, as the run's eval events)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--json-out", metavar="FILE", help="also write the report as JSON")
    p.add_argument("--csv", metavar="FILE", help="also write every value as CSV (model,scope,metric,class,value)")


def predict_arguments(p: argparse.ArgumentParser) -> None:
    _run_arguments(p)
    scenes = p.add_mutually_exclusive_group(required=True)
    scenes.add_argument("--scene", metavar="PATH", help="a scene folder, a 3DGS .ply, or a folder of them")
    scenes.add_argument("--split", metavar="NAME",
                        help="a split of the run's own data instead (e.g. val; the built-in rooms have train and val)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder: DIR/<scene>/<model>/")
    p.add_argument("--base", action="store_true", help="also predict with the base alone")
    p.add_argument("--query", action="append", default=[], metavar="TEXT",
                   help="lang: a class name to score every Gaussian against (repeatable; its row of the text embeddings)")
    p.add_argument("--embeddings", metavar="FILE",
                   help="lang: text embeddings .npy [C, D] with class names in a .json beside it "
                   "(default: the profile's `model.text_embeddings`)")
    p.add_argument("--no-render", action="store_true", help="skip the PNG renders")


def cmd_eval(args: argparse.Namespace) -> int:
    from engine.families.scenesplat.evaluate import cmd_eval as run  # lazy: the model and PEFT take seconds

    return run(args)


def cmd_predict(args: argparse.Namespace) -> int:
    from engine.families.scenesplat.predict import cmd_predict as run  # lazy: the model and PEFT take seconds

    return run(args)
