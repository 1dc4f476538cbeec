"""Provides the shared parts of lora3d's benchmark scripts: machine description, timing, peak memory, child runs.

Every benchmark reports RATIOS measured side by side in one run, together with the machine it ran on
(`describe_machine`). Timings are medians of several calls after warm-up (`time_calls`, or
`time_interleaved` when two or more variants should share the same machine load). Peak memory is
measured in a fresh child process per mode (`run_child`), so one mode's freed-but-kept pages never
count against the next: `torch.cuda.max_memory_allocated` on CUDA, the kernel's peak resident set
(`ru_maxrss`) above the level at `PeakMemory.start()` on CPU.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the scripts run from a clone without installing lora3d
    sys.path.insert(0, str(REPO))

from engine.memory.probe import proc_status_bytes, reset_peak_rss  # noqa: E402

CHILD_FLAG = "--_child"
"""Hidden flag: `script --_child MODE CONFIG_JSON` runs one measurement and prints its JSON last."""

_RESULT_PREFIX = "BENCH_RESULT "


# ------------------------------------------------------------------------------ machine
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def describe_machine(threads: int | None = None) -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, RAM, load, torch, threads, GPU."""
    import psutil
    import torch

    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    return {
        "cpu": _cpu_model(),
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "threads": threads if threads else torch.get_num_threads(),
        "python": platform.python_version(),
        "gpu": gpu,
        "git": _git_commit(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def format_machine(machine: dict[str, Any]) -> str:
    """One line for a console header or a markdown note."""
    load = ", ".join(f"{x:.1f}" for x in machine["load_avg"])
    gpu = machine["gpu"] or "no GPU"
    return (f"{machine['cpu']}; nproc {machine['nproc']}; RAM {machine['ram_gib']} GiB; load {load}; "
            f"torch {machine['torch']}; {machine['threads']} thread(s); {gpu}; git {machine['git']}")


# ------------------------------------------------------------------------------ timing
def _is_cuda(device: Any) -> bool:
    return getattr(device, "type", str(device)) == "cuda"


def sync(device: Any = None) -> None:
    """Waits for queued CUDA work, so a timer reads the work's end and not its launch."""
    import torch

    if torch.cuda.is_available() and (device is None or getattr(device, "type", str(device)) == "cuda"):
        torch.cuda.synchronize()


def summarize(times_s: Sequence[float], cpu_s: Sequence[float] | None = None) -> dict[str, float]:
    """Median, min and max of wall seconds, with the count and (when given) the median CPU seconds."""
    out = {"median_s": statistics.median(times_s), "min_s": min(times_s), "max_s": max(times_s), "n": len(times_s)}
    if cpu_s:
        out["cpu_median_s"] = statistics.median(cpu_s)
    return out


def timing_key(device: Any) -> str:
    """Which median a ratio uses: CPU seconds of this process on CPU, wall seconds on CUDA.

    On a shared CPU, wall time counts the time other processes held the core; the process's own CPU
    time (`time.process_time`, all its threads) barely moves with load. It misses work done in other
    processes, so measurements with worker processes use wall time (`median_s`) instead.
    """
    return "median_s" if _is_cuda(device) else "cpu_median_s"


def time_calls(fn: Callable[[], object], warmup: int = 1, repeat: int = 5, device: Any = None) -> dict[str, float]:
    """Times `fn` `repeat` times after `warmup` untimed calls; see `summarize`."""
    return time_interleaved({"fn": fn}, warmup, repeat, device)["fn"]


def time_interleaved(
    fns: dict[str, Callable[[], object]], warmup: int = 1, repeat: int = 5, device: Any = None
) -> dict[str, dict[str, float]]:
    """Times several variants round-robin (a, b, c, a, b, c, ...), so changing machine load hits all alike.

    The starting variant rotates every round, so none always runs right after the same one. Each
    variant's wall and CPU seconds are summarised (`summarize`).
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync(device)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeat):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0, c0 = time.perf_counter(), time.process_time()
            fns[name]()
            sync(device)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {name: summarize(wall[name], cpu[name]) for name in names}


# ------------------------------------------------------------------------------ memory
def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class PeakMemory:
    """Peak memory above the level at `start()`, in MiB: CUDA allocator peak, or the process's peak RSS.

    On CPU the peak is the kernel's high-water mark of this process (`ru_maxrss`), so it is exact but
    covers the whole process life: measure in a fresh process (`run_child`) whose earlier peak (imports,
    model build) is below the measured phase.
    """

    def __init__(self, device: Any) -> None:
        self.device = device
        self._base = 0

    def start(self) -> None:
        if _is_cuda(self.device):
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._hwm_reset = reset_peak_rss()
            self._base = _rss_bytes()

    def stop(self) -> dict[str, float]:
        """Returns {"extra_mib": peak above start, "peak_mib": absolute peak, "kind": what was read}."""
        if _is_cuda(self.device):
            import torch

            torch.cuda.synchronize()
            peak, kind = torch.cuda.max_memory_allocated(), "cuda max_memory_allocated"
        else:
            hwm = proc_status_bytes("VmHWM") if getattr(self, "_hwm_reset", False) else None
            peak = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            kind = "cpu peak RSS"
        return {"extra_mib": (peak - self._base) / 2**20, "peak_mib": peak / 2**20, "kind": kind}


# ------------------------------------------------------------------------------ child processes
def run_child(script: str | Path, mode: str, config: dict[str, Any], timeout_s: float = 1800) -> dict[str, Any]:
    """Runs `script --_child MODE CONFIG_JSON` in a fresh Python and returns the dict it reported.

    A failing child returns {"mode": mode, "error": "..."} instead of raising, so the other modes still run.
    """
    cmd = [sys.executable, str(script), CHILD_FLAG, mode, json.dumps(config)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"mode": mode, "error": f"timed out after {timeout_s:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_PREFIX):
            return json.loads(line[len(_RESULT_PREFIX):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"mode": mode, "error": f"exit {proc.returncode}: {' | '.join(tail)}"}


def child_entry(jobs: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> bool:
    """In a child started by `run_child`: run the named job, print its result, and return True.

    Returns False (doing nothing) when this process is not such a child. Call first thing in `main()`.
    """
    if len(sys.argv) < 4 or sys.argv[1] != CHILD_FLAG:
        return False
    mode, config = sys.argv[2], json.loads(sys.argv[3])
    threads = int(config.get("threads") or 0)
    if threads > 0:
        import torch

        torch.set_num_threads(threads)  # this measurement process only
    result = jobs[mode.split(":")[0]]({**config, "mode": mode})
    print(_RESULT_PREFIX + json.dumps(result), flush=True)
    return True


# ------------------------------------------------------------------------------ output
def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def goal_row(name: str, value: float | None, goal: float, better: str = "lower", unit: str = "x") -> dict[str, Any]:
    """A result row: the measured ratio, its goal and whether the goal was met ("pass", "miss", "n/a")."""
    if value is None:
        status = "n/a"
    elif better == "lower":
        status = "pass" if value <= goal else "miss"
    else:
        status = "pass" if value >= goal else "miss"
    sign = "<=" if better == "lower" else ">="
    return {"name": name, "value": value, "goal": f"{sign} {goal:g}{unit}", "status": status}


def print_rows(rows: list[dict[str, Any]]) -> None:
    """Prints result rows as an aligned table."""
    print(f"{'result':<58}{'ratio':>8}  {'goal':<10}{'status':<6}")
    for row in rows:
        value = "-" if row["value"] is None else f"{row['value']:.3f}"
        print(f"{row['name']:<58}{value:>8}  {row['goal']:<10}{row['status']:<6}")


def write_json(path: str | Path | None, payload: dict[str, Any]) -> None:
    """Writes the results as JSON when a path was given (`--json-out`)."""
    if path is not None:
        Path(path).write_text(json.dumps(payload, indent=2, default=str))
