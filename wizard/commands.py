"""Provides `lora3d wizard` and `lora3d watch`: the TUI on a terminal, plain lines otherwise."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.errors import CheckpointError
from engine.hardware import probe_hardware
from engine.train.events import check_event_log
from wizard.choices import default_choice
from wizard.draft import REPO_ROOT, ProfileDraft, free_run_dir
from wizard.plain import answers_from, questionary_answer, run_plain, watch_plain
from wizard.run.actions import run_actions, run_family
from wizard.run.launcher import launch_run

EXIT_OK, EXIT_FAILED = 0, 1


def _is_tty() -> bool:
    return sys.stdout.isatty() and sys.stdin.isatty()


def _reattach_hint(run_dir: Path) -> str:
    return (f"the run continues in the background. Reattach: lora3d watch {run_dir}   "
            f"(plain lines: --plain); stop it: touch {run_dir}/STOP")


def _report_exit(result) -> int:
    if not result:
        return EXIT_OK
    kind = result[0]
    if kind == "saved":
        print(f"profile saved to {result[1]}. Train it with: lora3d train {result[1]}")
    elif kind == "detached" and not result[2]:
        print(_reattach_hint(result[1]))
    elif kind in ("detached", "finished"):
        print(f"run directory: {result[1]}")
    return EXIT_OK


def cmd_wizard(args: argparse.Namespace) -> int:
    if not args.plain and _is_tty() and not args.demo:
        from wizard.app import make_app  # lazy: Textual, which the plain paths never load

        app = make_app()
        result = app.run()
        if result is None and app.run_dir is not None and app.saved_profile is not None:
            print(_reattach_hint(app.run_dir))
        return _report_exit(result)
    if not args.plain and not args.demo:
        print("stdout or stdin is not a terminal: using the plain wizard (lora3d wizard --plain).", flush=True)
    return run_plain_wizard(demo=args.demo or not sys.stdin.isatty(), profiles_dir=REPO_ROOT / "profiles")


def run_plain_wizard(demo: bool, profiles_dir: Path, out=None, answers: dict | None = None) -> int:
    """The questionary path: ask (or take defaults), save, train as a child process, print its events."""
    out = out or sys.stdout
    draft = ProfileDraft(hardware=probe_hardware())
    if demo and answers is None:
        print(f"accepting every default: {default_choice().label}", file=out)
    answer = answers_from(answers or {}) if demo or answers is not None else questionary_answer
    confirm = None
    if not demo and answers is None:
        import questionary  # lazy: prompt_toolkit, only for a person at a terminal

        def confirm(path: Path) -> bool:
            return bool(questionary.confirm(f"{path} exists. Overwrite it?", default=False).unsafe_ask())

    path = run_plain(draft, answer, profiles_dir, confirm_overwrite=confirm)
    print(f"profile saved to {path}", file=out)
    if not demo and answers is None:
        import questionary  # lazy: as above

        if not questionary.confirm("Start training now?", default=True).unsafe_ask():
            print(f"train later with: {draft.train_command(path)}", file=out)
            return EXIT_OK
    profile = draft.validate()
    run_dir = free_run_dir(Path(profile.output.dir))
    run = launch_run(path, run_dir, launch=draft.plan.num_gpus > 1)
    print(f"training in {run_dir} (pid {run.pid}, log {run.log_path}); Ctrl-C leaves it running", file=out, flush=True)
    try:
        state = watch_plain(run_dir, out, returncode=run.returncode)
    except KeyboardInterrupt:
        print("\n" + _reattach_hint(run_dir), file=out)
        return EXIT_OK
    if state.status == "completed":
        for action in run_actions(run_family(run_dir, state.start)):
            print(f"next, {action.label}: {action.command_line(run_dir, Path('SCENE'), run_dir / 'predictions')}",
                  file=out)
    return EXIT_OK if state.status in ("completed", "stopped") else EXIT_FAILED


def cmd_watch(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: run directory not found. Pass the folder `lora3d train --out` wrote.")
    if not (run_dir / "events.jsonl").exists() and not (run_dir / "train.log").exists():
        raise CheckpointError(f"{run_dir}: has no events.jsonl, so it is not a lora3d run (yet). "
                              "Pass the folder `lora3d train --out` wrote.")
    check_event_log(run_dir / "events.jsonl")  # a folder or unreadable log: one message, before any screen
    if args.plain or not _is_tty():
        state = watch_plain(run_dir, sys.stdout)
        return EXIT_OK if state.status in ("completed", "stopped", "running") else EXIT_FAILED
    from wizard.app import make_app  # lazy: see cmd_wizard

    return _report_exit(make_app(run_dir=run_dir).run())
