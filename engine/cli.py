"""Provides the `lora3d` command line; every user-fixable failure exits 2 with one message, no traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from engine.errors import Lora3dError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _print_error(message: str) -> None:
    from rich.markup import escape

    _console(stderr=True).print(f"[bold red]error:[/] {escape(message)}")


# ---------------------------------------------------------------------- commands
def cmd_validate(args: argparse.Namespace) -> int:
    from engine.profile import dump_profile, load_profile

    profile = load_profile(args.profile, args.set)
    print(dump_profile(profile), end="")
    _console(stderr=True).print(f"[green]ok[/]: {args.profile} is valid (effective batch {profile.effective_batch})")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from engine.profile import dump_profile, load_profile

    profile = load_profile(args.profile, args.set)
    if args.out:
        profile.output.dir = Path(args.out)
    if args.dry_run:
        print(dump_profile(profile), end="")
        _console(stderr=True).print(
            f"[green]dry run[/]: profile valid; would train into {profile.output.dir} "
            f"(effective batch {profile.effective_batch}); nothing was written"
        )
        return EXIT_OK
    if args.launch:
        from engine.launch import launch_profile

        return launch_profile(args.profile, args.set, out=args.out, resume=args.resume)
    from engine.memory.gpus import probe_hardware
    from engine.memory.hostram import check_host_ram
    from engine.profile.fingerprint import check_hardware
    from engine.train.display import HeadlessDisplay
    from engine.train.trainer import Trainer

    hardware = probe_hardware()
    for warning in check_hardware(profile, hardware) + check_host_ram(profile, None, hardware):
        _console(stderr=True).print(f"[yellow]warning:[/] {warning}")
    display = HeadlessDisplay(quiet=args.quiet)
    trainer = Trainer(profile, resume=args.resume, listeners=[display])
    try:
        result = trainer.run()
    finally:
        display.close()
    return EXIT_OK if result.status in ("completed", "stopped") else EXIT_FAILED


def cmd_probe(args: argparse.Namespace) -> int:
    from engine.memory.gpus import probe_hardware
    from engine.memory.tiers import GIB, recommend_tier

    hardware = probe_hardware()
    rec = recommend_tier(hardware)
    data = hardware.to_dict()
    data["recommendation"] = {
        "rank": rec.rank,
        "batch_size": rec.batch_size,
        "gradient_checkpointing": rec.gradient_checkpointing,
        "precision": rec.precision,
        "tier": rec.tier,
        "reason": rec.reason,
        "warning": rec.warning,
    }
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    from rich.table import Table

    console = _console()
    if hardware.cpu_mode:
        console.print(f"[bold]{hardware.note or 'no GPU: CPU mode (smoke tests and the demo)'}[/]")
    else:
        table = Table(title="GPUs (torch device order)")
        for col in ("index", "name", "total", "free", "driver", "capability"):
            table.add_column(col)
        for g in hardware.gpus:
            table.add_row(str(g.index), g.name, f"{g.total_bytes / GIB:.1f} GB", f"{g.free_bytes / GIB:.1f} GB",
                          g.driver or "?", g.compute_capability or "?")
        console.print(table)
    console.print(f"host RAM: {hardware.host_ram_bytes / GIB:.1f} GB, CPU cores: {hardware.cpu_count}")
    accel = ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in hardware.accelerators.items())
    console.print(f"optional accelerators: {accel}")
    console.print(
        f"recommendation ({rec.tier}): rank {rec.rank}, batch {rec.batch_size}, gradient checkpointing "
        f"{'on' if rec.gradient_checkpointing else 'off'}, precision {rec.precision}. {rec.reason}"
    )
    if rec.warning:
        console.print(f"[yellow]warning:[/] {rec.warning}")
    return EXIT_OK


def _lazy(module: str, func: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), func)(args)

    return run


# ---------------------------------------------------------------------- parser
MERGE_EPILOG = """\
which tools load the merged file (docs/interop.md):
  scenesplat .pth (default)  {"epoch", "state_dict"}: Pointcept / SceneSplat tester (`weight=`),
                             lora3d `model.pretrained`, model.load_state_dict(torch.load(f)["state_dict"])
  scenesplat .pth --bare     the state dict alone: model.load_state_dict(torch.load(f, weights_only=True))
  scenesplat .safetensors    the state dict alone: safetensors.torch.load_file(f), `model.pretrained`
  midi folder                diffusers transformer/: TripoSGDiTModel.from_pretrained(folder), infer --lora_path
  midi .safetensors          the transformer's state dict: load_file(f) into transformer, infer --lora_path
  midi .pth                  the transformer's state dict: transformer.load_state_dict(torch.load(f))
"""

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lora3d",
        description="LoRA fine-tuning of 3D foundation models (SceneSplat PTv3, MIDI-3D). "
        "Run with no command to open the wizard.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def profile_cmd(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("profile", help="profile YAML file")
        p.add_argument("--set", "--options", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                       help="dotted overrides, e.g. lora.r=8 train.lr=2e-4 (repeatable)")
        return p

    p = profile_cmd("train", "train a LoRA adapter from a profile")
    p.add_argument("--out", help="run directory (overrides output.dir)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--dry-run", action="store_true", help="validate and print the resolved profile only")
    p.add_argument("--launch", action="store_true", help="run through accelerate launch per the `launch` section")
    p.add_argument("--quiet", action="store_true", help="no progress display (events.jsonl is still written)")
    p.set_defaults(func=cmd_train)

    p = profile_cmd("validate", "validate a profile and print it resolved")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("probe", help="list GPUs, host RAM, optional accelerators and the tier recommendation")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_probe)

    p = profile_cmd("plan", "memory estimate, verdict and joint recommendation for a profile")
    p.add_argument("--json", action="store_true")
    p.add_argument("--measure", action="store_true", help="run a few real steps and record measured peak memory")
    p.add_argument("--write", action="store_true", help="with --measure: write the measured numbers into the profile")
    p.set_defaults(func=_lazy("engine.memory.plan", "cmd_plan"))

    p = profile_cmd("data-check", "scan the profile's data folder: counts, points, labels, problems")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_lazy("engine.commands", "cmd_data_check"))

    p = sub.add_parser("watch", help="open the training dashboard on a running or finished run")
    p.add_argument("run_dir")
    p.add_argument("--plain", action="store_true", help="print events as lines instead of the TUI")
    p.set_defaults(func=_lazy("wizard.commands", "cmd_watch"))

    p = sub.add_parser("wizard", help="the guided set-up (Textual TUI; --plain for questionary)")
    p.add_argument("--plain", action="store_true")
    p.add_argument("--demo", action="store_true", help="accept every default: run the built-in demo")
    p.set_defaults(func=_lazy("wizard.commands", "cmd_wizard"))

    p = sub.add_parser(
        "merge", help="fold a run's adapter into the base weights (loads into a plain model)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=MERGE_EPILOG,
        description="Fold a run's adapter into the base weights and write one checkpoint a plain model loads strictly.",
    )
    p.add_argument("run_dir", help="run directory (or adapter folder)")
    p.add_argument("--out", required=True, help="merged checkpoint file (.pth or .safetensors) or folder")
    p.add_argument("--bare", action="store_true",
                   help="scenesplat .pth: write the state dict alone instead of Pointcept's {'epoch', 'state_dict'}")
    p.set_defaults(func=_lazy("engine.commands", "cmd_merge"))

    p = sub.add_parser("import-3dgs", help="convert INRIA 3DGS .ply file(s) into SceneSplat scene folder(s)")
    p.add_argument("src", help=".ply file or folder of .ply files")
    p.add_argument("dest", help="scene folder (file mode) or dataset split folder (folder mode)")
    p.add_argument("--labels", help="optional .npy of per-point labels (file mode)")
    p.set_defaults(func=_lazy("engine.commands", "cmd_import_3dgs"))

    p = sub.add_parser("prepare-mesh", help="turn folders of meshes into MIDI training data")
    p.add_argument("--input_dir", "--input-dir", required=True)
    p.add_argument("--output_dir", "--output-dir", required=True)
    p.add_argument("--num_samples", "--num-samples", type=int, default=20480)
    p.add_argument("--image_size", "--image-size", type=int, default=512)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--allow_pickle_npy", action="store_true", help="read TripoSG pickled .npy dicts (unpickles!)")
    p.set_defaults(func=_lazy("engine.commands", "cmd_prepare_mesh"))

    p = sub.add_parser("infer", help="MIDI: generate a 3D scene (GLB/OBJ/PLY) from an image and a segmentation")
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
    p.set_defaults(func=_lazy("engine.commands", "cmd_infer"))

    p = sub.add_parser("demo", help="run a built-in demo headlessly (synthetic data, tiny base, real LoRA fine-tune)")
    p.add_argument("family", nargs="?", default="scenesplat", choices=["scenesplat", "midi"])
    p.add_argument("--out", help="run directory")
    p.set_defaults(func=_lazy("engine.commands", "cmd_demo"))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["wizard", *argv])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return int(args.func(args) or 0)
    except Lora3dError as exc:
        _print_error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _print_error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
