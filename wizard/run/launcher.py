"""Provides the run launcher: `lora3d train` as a child process in its own session, logging to train.log.

The wizard never trains in its own process. The child gets a new session (no controlling terminal, its
own process group), so closing the TUI or dropping the SSH connection never kills the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

LOG_NAME = "train.log"


@dataclass
class LaunchedRun:
    """A started training process."""

    run_dir: Path
    process: subprocess.Popen
    command: list[str]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_NAME

    def returncode(self) -> int | None:
        """The exit code once the child has ended, else None (never blocks)."""
        return self.process.poll()


def train_command(profile_path: Path, run_dir: Path, launch: bool = False, overrides: list[str] | None = None) -> list[str]:
    """The child's argv: this interpreter running the engine CLI quietly into `run_dir`."""
    cmd = [sys.executable, "-m", "engine", "train", str(profile_path), "--out", str(run_dir), "--quiet"]
    if launch:
        cmd.append("--launch")
    if overrides:
        cmd += ["--set", *overrides]
    return cmd


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child the wizard starts: `env` (default: ours) with this checkout first on the path."""
    result = dict(os.environ if env is None else env)
    # The child must import this checkout's `engine` and `wizard` even when started from elsewhere.
    repo = str(Path(__file__).resolve().parents[2])
    result["PYTHONPATH"] = os.pathsep.join(p for p in (repo, result.get("PYTHONPATH", "")) if p)
    return result


def launch_run(profile_path: Path, run_dir: Path, launch: bool = False, overrides: list[str] | None = None,
               env: dict[str, str] | None = None) -> LaunchedRun:
    """Starts training in the background; stdout and stderr go to `run_dir/train.log`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = train_command(profile_path, run_dir, launch=launch, overrides=overrides)
    with open(run_dir / LOG_NAME, "ab") as log:
        process = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=child_env(env), cwd=os.getcwd(),
        )
    return LaunchedRun(run_dir, process, cmd)


def request(run_dir: Path, what: str) -> Path:
    """Drops a control file (`SAVE` or `STOP`) the trainer acts on at its next step boundary."""
    if what not in ("SAVE", "STOP"):
        raise ValueError(what)
    path = run_dir / what
    path.write_text("requested by the lora3d wizard\n", encoding="utf-8")
    return path


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this id still runs (for reattached runs we did not start)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as ended
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def log_tail(run_dir: Path, lines: int = 15) -> list[str]:
    """The last lines of the child's log (empty when there is none)."""
    path = run_dir / LOG_NAME
    try:
        text = path.read_bytes()[-20000:].decode("utf-8", errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]
