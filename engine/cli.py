"""Provides the `lora3d` command line; every user-fixable failure exits 2 with one message, no traceback."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable

from engine.errors import Lora3dError, ProfileError
from engine.families.entry import CliCommand
from engine.families.registry import family_entries
from engine.write_errors import is_disk_problem, write_error

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3


def _console(stderr: bool = False):
    from rich.console import Console  # lazy: `lora3d --help` starts in 0.1 s

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _print_error(message: str) -> None:
    from rich.markup import escape  # lazy: see _console

    _console(stderr=True).print(f"[bold red]error:[/] {escape(message)}")


# ---------------------------------------------------------------------- commands
def _load(args: argparse.Namespace):
    # lazy: families import torch and PEFT (seconds); `lora3d --help` and `probe` do not need them
    from engine.families.recipe import load_recipe

    overrides = list(args.set)
    if getattr(args, "out", None):
        overrides.append(f"output.dir={args.out}")
    recipe = load_recipe(args.profile, overrides)
    for note in recipe.notes:
        _console(stderr=True).print(f"[yellow]note:[/] {note}")
    return recipe


def cmd_validate(args: argparse.Namespace) -> int:
    from engine.profile import dump_profile  # lazy: see _load

    recipe = _load(args)
    print(dump_profile(recipe.profile), end="")
    _console(stderr=True).print(
        f"[green]ok[/]: {args.profile} is valid (effective batch {recipe.profile.effective_batch})"
    )
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    """`lora3d train`: exit 0 completed, 3 stopped (checkpoint and partial adapter written; --resume continues),
    2 a problem the message names, 1 an unexpected failure."""
    from engine.profile import dump_profile  # lazy: see _load

    recipe = _load(args)
    profile = recipe.profile
    if args.dry_run:
        print(dump_profile(profile), end="")
        _console(stderr=True).print(
            f"[green]dry run[/]: profile valid; would train into {profile.output.dir} "
            f"(effective batch {profile.effective_batch}); nothing was written"
        )
        return EXIT_OK
    # lazy: the memory checks and the trainer import torch and accelerate
    from engine.memory.fingerprint import check_hardware
    from engine.memory.hostram import check_host_ram
    from engine.memory.oom import check_fits
    from engine.memory.plan import hardware_for_plan

    hardware = hardware_for_plan()  # this machine (or the LORA3D_FAKE_GPU_GB test seam, as `lora3d plan`)
    for warning in check_hardware(profile, hardware) + check_host_ram(recipe, hardware):
        _console(stderr=True).print(f"[yellow]warning:[/] {warning}")
    if args.force:
        _console(stderr=True).print("[yellow]note:[/] --force: the memory check before training is skipped")
    else:
        check_fits(recipe, hardware)
    if args.launch:
        from engine.launch import launch_profile  # lazy: imports torch

        return launch_profile(profile, args.profile, args.set, out=args.out, resume=args.resume, force=True)
    from engine.train.display import HeadlessDisplay  # lazy: the trainer imports torch; see load_recipe above
    from engine.train.prerequisites import ensure_prerequisites  # lazy: as above
    from engine.train.trainer import Trainer  # lazy: as above

    display = HeadlessDisplay(quiet=args.quiet)
    trainer = Trainer(recipe, resume=args.resume, listeners=[display], prepare=ensure_prerequisites)
    try:
        result = trainer.run()
    finally:
        display.close()
    if result.status == "stopped":
        resolved = result.run_dir / "profile.resolved.yaml"
        _console(stderr=True).print(
            f"[yellow]stopped[/] at step {result.step}: checkpoint and partial adapter written (exit code "
            f"{EXIT_STOPPED}); continue with `lora3d train {resolved} --resume`"
        )
        return EXIT_STOPPED
    return EXIT_OK if result.status == "completed" else EXIT_FAILED


def cmd_probe(args: argparse.Namespace) -> int:
    # lazy: NVML and psutil only when probing
    from engine.hardware import probe_hardware
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
    from rich.table import Table  # lazy: start-up time

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


def _lazy(target: str) -> Callable[[argparse.Namespace], int]:
    """A command function named `module:function`, imported when the command runs (start-up time)."""

    def run(args: argparse.Namespace) -> int:
        module, function = target.split(":")
        return getattr(importlib.import_module(module), function)(args)

    return run


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    entries = family_entries()
    parser = argparse.ArgumentParser(
        prog="lora3d",
        description="LoRA fine-tuning of 3D foundation models. Run with no command to open the wizard. Families: "
        + "; ".join(entry.label for entry in entries.values()) + ".",
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
    p.add_argument("--force", action="store_true",
                   help="train even when the memory planner says the run cannot fit this machine")
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
    p.add_argument("--inference", action="store_true",
                   help="inference mode: the points one forward pass without gradients may take (predict, eval)")
    p.add_argument("--scene-points", type=int, metavar="N", help="with --inference: the scene's Gaussians")
    p.add_argument("--memory-gb", type=float, metavar="GB", help="with --inference: the memory budget (default: the device's)")
    p.set_defaults(func=_lazy("engine.commands:cmd_plan"))

    p = profile_cmd("data-check", "scan the profile's data folder: counts, points, labels, problems")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_lazy("engine.commands:cmd_data_check"))

    p = sub.add_parser("watch", help="open the training dashboard on a running or finished run")
    p.add_argument("run_dir")
    p.add_argument("--plain", action="store_true", help="print events as lines instead of the TUI")
    p.set_defaults(func=_lazy("wizard.commands:cmd_watch"))

    p = sub.add_parser("wizard", help="the guided set-up (Textual TUI; --plain for questionary)")
    p.add_argument("--plain", action="store_true")
    p.add_argument("--demo", action="store_true", help="accept every default: run the built-in demo")
    p.set_defaults(func=_lazy("wizard.commands:cmd_wizard"))

    p = sub.add_parser(
        "merge", help="fold a run's adapter into the base weights (loads into a plain model)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="which tools load the merged file (docs/interop.md):\n"
        + "".join(entry.merged_formats for entry in entries.values()),
        description="Fold a run's adapter into the base weights and write one checkpoint a plain model loads strictly.",
    )
    p.add_argument("run_dir", help="run directory (or adapter folder)")
    p.add_argument("--out", required=True, help="merged checkpoint file (.pth or .safetensors) or folder")
    p.add_argument("--bare", action="store_true",
                   help="write the state dict alone where the family's file wraps it (e.g. Pointcept's "
                   "{'epoch', 'state_dict'})")
    p.set_defaults(func=_lazy("engine.commands:cmd_merge"))

    demos = [name for name, entry in entries.items() if entry.demo]
    p = sub.add_parser("demo", help="run a built-in demo headlessly (synthetic data, tiny base, real LoRA fine-tune)")
    p.add_argument("family", choices=demos, help="the family whose demo to run")
    p.add_argument("--out", help="run directory")
    p.set_defaults(func=_lazy("engine.commands:cmd_demo"))

    declared: dict[str, dict[str, CliCommand]] = {}
    for family, entry in entries.items():
        for command in entry.commands:
            declared.setdefault(command.name, {})[family] = command
    for name, owners in declared.items():
        if len(owners) == 1:
            command = next(iter(owners.values()))
            p = sub.add_parser(name, help=command.help, description=command.help)
            command.arguments(p)
            p.set_defaults(func=_lazy(command.run))
            continue
        # Several families declare it (e.g. `eval`, `predict`): the run directory names the family.
        help = f"{next(iter(owners.values())).help} ({', '.join(owners)})"
        p = sub.add_parser(name, help=help, description=f"{help}. `lora3d {name} RUN_DIR --help` lists the options "
                           "of the run's family.")
        p.add_argument("run_dir", metavar="RUN_DIR", help="run directory, adapter folder of a run, or profile")
        p.add_argument("rest", nargs=argparse.REMAINDER, help="the family's options")
        p.set_defaults(func=_per_family(name, owners))
    return parser


def _per_family(name: str, owners: dict[str, CliCommand]) -> Callable[[argparse.Namespace], int]:
    """A command several families declare: parsed and run by the family of the run directory it is given.

    NOTE: such commands take the run directory (or profile) as their first positional, `run_dir`.
    """

    def run(args: argparse.Namespace) -> int:
        from engine.families.evaluation import family_of_source  # lazy: reads the run's profile only when run

        family = family_of_source(args.run_dir)
        if family not in owners:
            raise ProfileError(
                f"{args.run_dir}: `lora3d {name}` is not available for the {family} family, got a {family} run. "
                f"It is for {', '.join(owners)} runs."
            )
        command = owners[family]
        parser = argparse.ArgumentParser(prog=f"lora3d {name}", description=f"{command.help} ({family})")
        command.arguments(parser)
        return _lazy(command.run)(parser.parse_args([args.run_dir, *args.rest]))

    return run


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        parser = build_parser()  # reads the families' entries: a bad LORA3D_PLUGINS is a user error
        args = parser.parse_args(argv)
        if args.command is None:
            args = parser.parse_args(["wizard", *argv])
        return int(args.func(args) or 0)
    except Lora3dError as exc:
        _print_error(str(exc))
        return EXIT_USAGE
    except Exception as exc:
        if not is_disk_problem(exc):
            raise
        # A full disk or read-only folder met by a write no command translated: the user's to fix, no traceback.
        _print_error(str(write_error(getattr(exc, "filename", None) or "a file", exc)))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _print_error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
