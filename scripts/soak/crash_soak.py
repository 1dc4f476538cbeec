"""Provides the crash-safety soak: SIGKILL a real `lora3d train` at random moments, resume, compare.

One uninterrupted reference run, then the same profile in a second run directory that is killed with
SIGKILL at `--kills` seeded random moments (checkpointing every step, so many kills land inside a
checkpoint write) and resumed with `--resume` after each kill. After every kill the run directory is
checked independently of the engine's own reader:

* every `checkpoints/step-N/` folder has a manifest that parses, lists its files, and every listed
  file exists with exactly the recorded size and reads back (safetensors / JSON);
* the resumed process starts from the newest complete checkpoint (its `start` event's `resumed_from`);
* `events.jsonl` stays readable by `read_events` (torn lines are skipped, never fatal).

At the end the adapter must equal the reference run's to `--atol` and the last event must be `end`
with status `completed`.

Usage (from the repository root):

    python scripts/soak/crash_soak.py --kills 20 --seed 0 --work /tmp/lora3d-soak
    python scripts/soak/crash_soak.py --family scenesplat --kills 5 --seed 0 --work /tmp/lora3d-soak-ss
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from engine.train.events import read_events  # noqa: E402

_STEP = re.compile(r"^step-(\d+)(?:\.(\d+))?$")
"""`step-N`, or `step-N.G` for the G-th re-save of step N (a SAVE request, then the stop at the same step)."""


def toy_profile(run_dir: Path, max_steps: int = 40) -> dict[str, Any]:
    """The toy family's soak profile: a checkpoint every step, pruning on (keep_last 2)."""
    return {
        "schema_version": 1,
        "name": "soak-toy",
        "model": {"family": "toy", "task": "regress", "num_blocks": 2},
        "lora": {"r": 4, "alpha": 8},
        "data": {"num_train": 64, "num_val": 8},
        "train": {"max_steps": max_steps, "batch_size": 2, "grad_accum": 2, "lr": 0.05, "warmup_steps": 2,
                  "checkpoint_every": 1, "keep_last": 2, "eval_every": 10, "device": "cpu"},
        "output": {"dir": str(run_dir), "tensorboard": False},
    }


def scenesplat_profile(run_dir: Path, max_steps: int = 12) -> dict[str, Any]:
    """The SceneSplat demo profile shrunk: random tiny base (no pretraining), few small rooms."""
    data = yaml.safe_load((REPO / "profiles" / "demo-scenesplat.yaml").read_text())
    data["name"] = "soak-scenesplat"
    data["model"]["demo_base"] = False
    data["data"].update({"synthetic_train": 4, "synthetic_val": 1, "synthetic_points": 600})
    data["train"].update({"max_steps": max_steps, "checkpoint_every": 1, "keep_last": 2})
    data["output"] = {"dir": str(run_dir), "tensorboard": False}
    return data


@dataclass
class KillRecord:
    pid: int
    delay_s: float
    in_startup: bool
    newest_before_resume: str | None
    """The newest complete `step-N` after the kill (this script's own check)."""
    partial_tmp_folders: int
    """`.tmp-*` folders the kill left: it landed inside a checkpoint write or a prune."""
    exit_code: int | None = None
    term_first: bool = False
    """SIGTERM was sent first (the run was stopping when the SIGKILL came)."""
    resumed_from: str | None = None
    """What the killed process itself resumed from (its `start` event), when it got that far."""


@dataclass
class SoakResult:
    family: str
    seed: int
    mode: str
    kills: list[KillRecord] = field(default_factory=list)
    resumes: int = 0
    verified_resumes: int = 0
    """Runs whose `start` event shows they resumed from exactly the newest complete checkpoint."""
    kills_inside_checkpoint_write: int = 0
    term_then_kill: int = 0
    """Kills preceded by a SIGTERM (stop, then kill)."""
    kills_inside_prune: int = 0
    """Kills that left a `.tmp-prune-*` folder: they landed while an old checkpoint was being deleted."""
    torn_event_lines: int = 0
    max_weight_diff: float = float("nan")
    reference_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def _env() -> dict[str, str]:
    env = dict(os.environ)
    plugins = [p for p in env.get("LORA3D_PLUGINS", "").split(",") if p]
    if "tests.toy_family" not in plugins:
        plugins.append("tests.toy_family")
    env["LORA3D_PLUGINS"] = ",".join(plugins)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _train_args(profile: Path, resume: bool) -> list[str]:
    return ["train", str(profile), "--quiet"] + (["--resume"] if resume else [])


class _Run:
    """One `lora3d train` process: a fresh `python -m engine` (exec) or a fork of this warm process (fork).

    Fork mode runs the same entry point, `engine.cli.main(["train", ...])`, in a child forked from a
    process that has already imported torch and the engine, so a kill lands in training rather than in
    the (on a loaded machine) 30-second import; the child is a separate process killed with SIGKILL all
    the same.
    """

    def __init__(self, mode: str, profile: Path, resume: bool, log: Path) -> None:
        self.mode, self.log = mode, log
        self.code: int | None = None
        args = _train_args(profile, resume)
        if mode == "exec":
            with open(log, "w") as err:
                self.proc = subprocess.Popen([sys.executable, "-m", "engine", *args], cwd=REPO, env=_env(),
                                             stdout=subprocess.DEVNULL, stderr=err)
            self.pid = self.proc.pid
            return
        pid = os.fork()
        if pid == 0:  # child: become `lora3d train`, never return into the soak loop
            code = 1
            try:
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 2)
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                import torch

                torch.set_num_threads(1)
                from engine.cli import main as cli_main

                code = cli_main(args)
            except BaseException:  # a traceback is a finding: it goes to the log, exit 1
                import traceback

                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        self.pid = pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def poll(self) -> int | None:
        """The exit code once the process has ended, else None (negative: killed by that signal)."""
        if self.mode == "exec":
            return self.proc.poll()
        if self.code is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def wait(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while (code := self.poll()) is None:
            if time.monotonic() > deadline:
                self.kill()
            time.sleep(0.01)
        return code


def _warm_for_fork() -> None:
    """Imports what `lora3d train` imports, without running any torch op (no thread pools before fork)."""
    os.environ.update({k: v for k, v in _env().items() if k in ("LORA3D_PLUGINS", "OMP_NUM_THREADS")})
    import accelerate  # noqa: F401
    import peft  # noqa: F401

    import engine.cli  # noqa: F401
    import engine.train.trainer  # noqa: F401
    from engine.families.registry import family_names

    family_names()  # imports the LORA3D_PLUGINS modules (the toy family)


def _count_starts(path: Path) -> int:
    return sum(1 for e in read_events(path) if e.get("type") == "start") if path.exists() else 0


def check_checkpoint_folder(folder: Path) -> list[str]:
    """Problems with one `step-N` folder (empty when it is complete and every file reads back)."""
    from safetensors import safe_open

    try:
        files = json.loads((folder / "checkpoint.json").read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"{folder}: manifest unreadable ({exc})"]
    problems = []
    on_disk = {p.name for p in folder.iterdir()} - {"checkpoint.json"}
    if set(files) != on_disk:
        problems.append(f"{folder}: manifest lists {sorted(files)}, folder holds {sorted(on_disk)}")
    for name, size in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            problems.append(f"{path}: missing or size differs from the manifest's {size}")
            continue
        try:
            if name.endswith(".safetensors"):
                with safe_open(str(path), framework="pt") as handle:
                    for key in handle.keys():  # noqa: SIM118
                        handle.get_tensor(key)
            elif name.endswith(".json"):
                json.loads(path.read_text())
        except Exception as exc:  # any failure to read back is a finding
            problems.append(f"{path}: does not read back ({type(exc).__name__}: {exc})")
    return problems


def _key(name: str) -> tuple[int, int] | None:
    m = _STEP.match(name)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def _step_folders(root: Path) -> list[tuple[tuple[int, int], Path]]:
    if not root.is_dir():
        return []
    return sorted((key, p) for p in root.iterdir() if (key := _key(p.name)))


def check_checkpoint_folders(root: Path) -> list[str]:
    """Problems with any `step-N` folder under `root`: every one must be complete and readable."""
    return [problem for _, folder in _step_folders(root) for problem in check_checkpoint_folder(folder)]


def newest_complete(root: Path) -> str | None:
    """The checkpoint a `--resume` must continue from, by this script's own completeness check: the newest
    complete `step-N[.G]`, or a newer complete one a killed process had not finished renaming into place
    (`.tmp-step-N`, written whole) or was deleting with nothing newer to replace it (`.tmp-prune-`/`.tmp-old-`),
    which the engine recovers (the promise: the newest step that was ever complete is never lost)."""
    complete = [(key, folder.name) for key, folder in _step_folders(root) if not check_checkpoint_folder(folder)]
    names = {name for _, name in complete}
    newest = max(complete)[0] if complete else None
    if root.is_dir():
        for p in root.iterdir():
            rest = p.name.removeprefix(".tmp-")
            if rest == p.name or check_checkpoint_folder(p):
                continue
            target = rest.split("-", 1)[1] if rest.startswith(("prune-", "old-")) else rest
            key = _key(target)
            if key is None or target in names:
                continue
            if rest == target or newest is None or key > newest:  # a write in progress, or the newest one
                complete.append((key, target))
    return max(complete)[1] if complete else None


def torn_lines(path: Path) -> int:
    """Lines of events.jsonl that are not a complete JSON event (each a kill mid-write)."""
    if not path.exists():
        return 0
    bad = 0
    for raw in path.read_bytes().split(b"\n"):
        if not raw.strip():
            continue
        try:
            json.loads(raw)
        except ValueError:
            bad += 1
    return bad


def _adapter(run_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def max_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    if a.keys() != b.keys() or not a:
        return float("inf")
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def run_soak(
    work: Path,
    kills: int = 3,
    seed: int = 0,
    family: str = "toy",
    atol: float = 1e-5,
    max_steps: int | None = None,
    mode: str = "exec",
    timeout_s: float = 900.0,
    term_fraction: float = 0.3,
) -> SoakResult:
    """Runs the soak in `work` (emptied first) and returns what happened; see the module docstring.

    Args:
        mode: "exec" starts every run as `python -m engine train`; "fork" forks it from this process
            (see _Run). Kills are timed from the moment the run's `start` event appears, uniformly over
            the reference run's training time; one kill in five lands in start-up instead.
        term_fraction: share of the kills that send SIGTERM first and SIGKILL 0-0.3 s later (a batch
            system's stop then kill): the kill lands in the stop's checkpoint or partial adapter write.
    """
    work = Path(work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    build = toy_profile if family == "toy" else scenesplat_profile
    extra = {} if max_steps is None else {"max_steps": max_steps}
    ref_dir, soak_dir = work / "reference", work / "soak"
    ref_profile, soak_profile = work / "reference.yaml", work / "soak.yaml"
    ref_profile.write_text(yaml.safe_dump(build(ref_dir, **extra), sort_keys=False))
    soak_profile.write_text(yaml.safe_dump(build(soak_dir, **extra), sort_keys=False))
    result = SoakResult(family=family, seed=seed, mode=mode)
    if mode == "fork":
        _warm_for_fork()

    t0 = time.perf_counter()
    ref = _Run(mode, ref_profile, False, work / "reference.log")
    code = ref.wait(timeout_s)
    launch_to_end = time.perf_counter() - t0
    if code != 0:
        result.problems.append(f"reference run failed (exit {code}): {(work / 'reference.log').read_text()[-2000:]}")
        return result
    ref_events = read_events(ref_dir / "events.jsonl")
    train_s = ref_events[-1]["time"] - ref_events[0]["time"]
    startup_s = max(launch_to_end - train_s, 0.05)
    result.reference_seconds = round(train_s, 3)

    rng = random.Random(seed)
    ckpt_root = soak_dir / "checkpoints"
    events_path = soak_dir / "events.jsonl"
    resume = False
    for i in range(kills):
        # Mean progress per kill is 1/(kills + 1) of the run, so the kills spread over the whole run
        # instead of piling up after it completed.
        in_startup = rng.random() < 0.2
        delay = rng.uniform(0.0, startup_s if in_startup else 2 * train_s / (kills + 1))
        starts_before = _count_starts(events_path)
        run = _Run(mode, soak_profile, resume, work / f"kill-{i + 1}.log")
        if not in_startup:  # wait for this process's `start` event, then time the kill from there
            while run.poll() is None and _count_starts(events_path) == starts_before:
                time.sleep(0.005)
        time.sleep(delay)
        term_first = rng.random() < term_fraction
        if term_first:
            run.kill(signal.SIGTERM)
            time.sleep(rng.uniform(0.0, 0.3))
        run.kill()
        code = run.wait(timeout_s)
        record = KillRecord(pid=run.pid, delay_s=round(delay, 3), in_startup=in_startup, newest_before_resume=None,
                            partial_tmp_folders=0, exit_code=code, term_first=term_first)
        result.term_then_kill += term_first
        if code not in (-signal.SIGKILL, 0, 3, -signal.SIGTERM):  # 3: it finished stopping before the SIGKILL
            log = (work / f"kill-{i + 1}.log").read_text()
            result.problems.append(f"run before kill {i + 1} failed (exit {code}): {log[-2000:]}")
        tmp = [p.name for p in ckpt_root.iterdir() if p.name.startswith(".tmp-")] if ckpt_root.is_dir() else []
        record.partial_tmp_folders = len(tmp)
        result.kills_inside_checkpoint_write += any(n.startswith(".tmp-step-") for n in tmp)
        result.kills_inside_prune += any(n.startswith((".tmp-prune-", ".tmp-old-")) for n in tmp)
        result.problems.extend(f"after kill {i + 1}: {p}" for p in check_checkpoint_folders(ckpt_root))
        record.newest_before_resume = newest_complete(ckpt_root)
        if events_path.exists():
            try:
                read_events(events_path)
            except Exception as exc:  # the reader must never fail on a killed run's log
                result.problems.append(f"read_events failed after kill {i + 1}: {exc!r}")
        result.kills.append(record)
        resume = True

    # The last resume runs to the end (what a user does after the final crash).
    final = _Run(mode, soak_profile, resume, work / "final.log")
    code = final.wait(timeout_s)
    result.resumes = kills  # every kill is followed by one --resume run
    log = (work / "final.log").read_text()
    if code != 0:
        result.problems.append(f"final resume failed (exit {code}): {log[-2000:]}")
        return result
    if "Traceback" in log:
        result.problems.append(f"final resume printed a traceback: {log[-2000:]}")
    result.problems.extend(check_checkpoint_folders(ckpt_root))

    events = read_events(events_path)
    result.torn_event_lines = torn_lines(events_path)
    if result.torn_event_lines > kills:
        result.problems.append(f"{result.torn_event_lines} torn event lines for {kills} kills")
    if not events or events[-1].get("type") != "end" or events[-1].get("status") != "completed":
        result.problems.append(f"last event is not end/completed: {events[-1] if events else None}")
    # Every process that got as far as its `start` event (matched by pid) must have resumed from the
    # newest complete checkpoint as it was when the process before it was killed.
    start_by_pid = {e.get("pid"): e for e in events if e.get("type") == "start"}
    expected = [None] + [k.newest_before_resume for k in result.kills]
    for pid, want, record in zip([*(k.pid for k in result.kills), final.pid], expected, [*result.kills, None],
                                 strict=True):
        start = start_by_pid.get(pid)
        if start is None:
            continue  # killed before its start event
        got = start.get("resumed_from")
        if record is not None:
            record.resumed_from = got
        if got != want:
            result.problems.append(f"process {pid} resumed from {got!r}, newest complete checkpoint was {want!r}")
        else:
            result.verified_resumes += want is not None
    if ckpt_root.is_dir() and any(p.name.startswith(".tmp-") for p in ckpt_root.iterdir()):
        result.problems.append("a .tmp- checkpoint folder survived the final resume")
    result.max_weight_diff = max_difference(_adapter(ref_dir), _adapter(soak_dir))
    if not result.max_weight_diff <= atol:
        result.problems.append(f"adapter differs from the reference run by {result.max_weight_diff:.3g} > {atol:g}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--family", choices=["toy", "scenesplat"], default="toy")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--mode", choices=["exec", "fork"], default="exec",
                        help="exec: every run is a fresh `python -m engine train`; fork: forked from this process")
    parser.add_argument("--term-fraction", type=float, default=0.3,
                        help="share of kills preceded by SIGTERM (stop, then kill 0-0.3 s later)")
    parser.add_argument("--work", default="/tmp/lora3d-soak")
    parser.add_argument("--json", help="write the result as JSON here")
    args = parser.parse_args(argv)
    result = run_soak(Path(args.work), args.kills, args.seed, args.family, args.atol, args.max_steps, args.mode,
                      term_fraction=args.term_fraction)
    text = json.dumps(result.to_dict(), indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    print(
        f"{'OK' if result.ok else 'FAILED'}: {len(result.kills)} kills ({result.term_then_kill} after a SIGTERM), "
        f"{result.resumes} resumes, "
        f"{result.verified_resumes} verified newest-checkpoint resumes, "
        f"{result.kills_inside_checkpoint_write} inside a checkpoint write, {result.kills_inside_prune} inside a prune, {result.torn_event_lines} torn event "
        f"lines, max adapter difference {result.max_weight_diff:.3g}"
    )
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
