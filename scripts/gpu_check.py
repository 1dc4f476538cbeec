"""Provides the GPU readiness check: one command that exercises lora3d's CUDA paths and writes one report.

    python scripts/gpu_check.py                        # a CUDA machine: every section, about 7 min on one H100
    python scripts/gpu_check.py --dry-run              # the same checks at tiny sizes on the CPU (the tests run it)
    python scripts/gpu_check.py --sections fidelity,training --out gpu-report
    bash scripts/gpucheck/run_on_device.sh             # the lent GPU machine: carried wheels, check, report to $OUT

Sections, in order (each in its own process, with its own timeout inside `--budget-s`):
environment (torch/CUDA, NVML probe, packages), fidelity (golden vectors fp32 and bf16, sparse conv,
SDPA kernels), spconv (spconv vs pure torch, goldens through spconv), training (both demos through
`lora3d train` in bf16 and fp16, OOM recovery under a memory cap, resume), memory (planner estimate vs
max_memory_allocated), speed (scripts/bench at real sizes).

Writes OUT/gpu_check.json and OUT/gpu_check.md (format: docs/gpu.md). Exit code 0: no check failed;
1: a check failed (with --strict-goals also a missed goal); 2: bad usage (e.g. no CUDA without --dry-run).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
for _path in (str(SCRIPTS), str(REPO)):  # the check runs from a clone, without installing lora3d
    if _path not in sys.path:
        sys.path.insert(0, _path)

from gpucheck.record import Context, Section  # noqa: E402
from gpucheck.report import SCHEMA_VERSION, counts, exit_code, section_status, write_report  # noqa: E402

SECTIONS: dict[str, tuple[int, int]] = {
    "environment": (60, 120),
    "fidelity": (120, 240),
    "spconv": (90, 60),
    "training": (210, 300),
    "memory": (150, 240),
    "speed": (240, 600),
}
"""Section name -> (timeout on CUDA, timeout in a dry run), seconds; run in this order."""
MODULES = {"spconv": "spconv_check"}
"""Section -> module of scripts/gpucheck/ where the names differ (a module named spconv would shadow spconv)."""
GPU_BUDGET_S = 420
"""Default wall-clock budget of a CUDA run: 7 minutes, inside an 8-minute device slot with start-up."""
MIN_SECTION_S = 20
_CHILD = "--_section"


def _git() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _run_child(name: str, context_path: Path) -> int:
    """In the section's own process: run it and write `work/section-NAME.json` after every check."""
    ctx = Context.from_dict(json.loads(context_path.read_text()))
    section = Section(name, path=ctx.out_dir / "work" / f"section-{name}.json")
    section.write(section.path)
    import torch  # lazy: the parent's argument errors should not wait for torch

    if ctx.dry_run:
        # The tiny models of a dry run are slower with several threads on a shared CPU (thread sync).
        torch.set_num_threads(1)
    module = importlib.import_module(f"gpucheck.{MODULES.get(name, name)}")
    with section.guard(f"{name}: section crashed"):
        module.run(ctx, section)
    section.write(section.path)
    return 0


class _Child:
    """One section running in its own process, with its timeout and log; `finish` reads what it wrote."""

    def __init__(self, name: str, ctx: Context, timeout: float, log: Path) -> None:
        self.name, self.ctx, self.timeout, self.log = name, ctx, timeout, log
        context_path = ctx.work / f"context-{name}.json"
        context_path.write_text(json.dumps(ctx.to_dict()))
        self.result_path = ctx.work / f"section-{name}.json"
        self.result_path.unlink(missing_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", LORA3D_CACHE=str(ctx.work / "cache"))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRIPTS), str(REPO), env.get("PYTHONPATH")]))
        if ctx.dry_run:
            env["CUDA_VISIBLE_DEVICES"] = ""  # a dry run is the CPU path even on a GPU machine
            env["OMP_NUM_THREADS"] = "1"
        cmd = [sys.executable, str(Path(__file__).resolve()), _CHILD, name, str(context_path)]
        self.t0 = time.time()
        self._out = open(log, "w")  # noqa: SIM115  (closed in finish)
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, env=env)
        self.cpu_s = 0.0
        self.note = ""

    def poll(self) -> bool:
        """True once the process has ended (it is stopped first when past its timeout)."""
        pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
        if pid == 0 and time.time() - self.t0 > self.timeout:
            self.proc.kill()
            pid, status, usage = os.wait4(self.proc.pid, 0)
            self.note = f"stopped by its timeout after {self.timeout:.0f} s (log: {self.log.name})"
        if pid == 0:
            return False
        # Reaped here with its own resource usage (CPU seconds per section, also when sections overlap).
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.cpu_s = usage.ru_utime + usage.ru_stime
        if self.proc.returncode and not self.note:
            self.note = f"the section's process exited with code {self.proc.returncode} (log: {self.log.name})"
        return True

    def finish(self) -> dict[str, Any]:
        self._out.close()
        seconds = time.time() - self.t0
        data = json.loads(self.result_path.read_text()) if self.result_path.is_file() else {"checks": [], "facts": {}}
        checks = data["checks"]
        if self.note:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-3:] if self.log.is_file() else []
            checks.append({"name": f"{self.name}: process", "status": "fail",
                           "detail": self.note + ": " + " | ".join(tail)[-400:], "values": {}})
        return {"name": self.name, "status": section_status(checks), "seconds": seconds, "cpu_s": self.cpu_s,
                "timeout_s": round(self.timeout), "facts": data.get("facts", {}), "checks": checks, "note": self.note}


def _run_sections(names: list[str], args: argparse.Namespace, out: Path, budget: float | None,
                  options: dict[str, Any]) -> list[dict[str, Any]]:
    """Runs the sections, `args.jobs` at a time, each inside its timeout and what is left of the budget."""
    end = time.time() + budget if budget else None
    results: dict[str, dict[str, Any]] = {}
    pending, running = list(names), []
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            if name == "spconv" and args.dry_run:
                results[name] = _skipped(name, "lora3d runs spconv only on CUDA (its CPU kernels are wrong with >1 thread)")
                continue
            cap = SECTIONS[name][1 if args.dry_run else 0]
            left = (end - time.time()) if end else cap
            if left < MIN_SECTION_S:
                results[name] = _skipped(name, f"the time budget ({budget:.0f} s) was spent before this section")
                continue
            timeout = min(cap, left)
            ctx = Context("cpu" if args.dry_run else "cuda", args.dry_run, out, REPO, time.time() + timeout, options)
            print(f"gpu_check: {name} (timeout {timeout:.0f} s) ...", flush=True)
            running.append(_Child(name, ctx, timeout, out / "logs" / f"{name}.log"))
        for child in [c for c in running if c.poll()]:
            running.remove(child)
            results[child.name] = result = child.finish()
            print(f"gpu_check: {child.name}: {result['status']} in {result['seconds']:.0f} s "
                  f"({result['cpu_s']:.0f} CPU s)", flush=True)
        time.sleep(0.2 if running else 0)
    return [results[name] for name in names]


def _skipped(name: str, reason: str) -> dict[str, Any]:
    checks = [{"name": name, "status": "skip", "detail": reason, "values": {}}]
    return {"name": name, "status": "skip", "seconds": 0.0, "cpu_s": 0.0, "timeout_s": 0, "facts": {}, "checks": checks,
            "note": ""}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (no GPU needed)")
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="report folder (default gpu-check/)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {list(SECTIONS)}")
    parser.add_argument("--skip", default="", help="comma-separated sections to leave out")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"wall-clock budget for all sections (default {GPU_BUDGET_S} on CUDA, none in a dry run)")
    parser.add_argument("--dit-instances", type=int, default=1,
                        help="memory section: instances per scene of the full-width DiT (default 1, TripoSG's layout)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="sections at a time (default 1 on CUDA, 2 in a dry run on a multi-core CPU)")
    parser.add_argument("--strict-goals", action="store_true", help="a missed goal (memory, speed) also fails the run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [_CHILD]:
        return _run_child(argv[1], Path(argv[2]))
    args = _parse(argv)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    skipped = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = sorted((set(wanted) | skipped) - set(SECTIONS))
    if unknown:
        print(f"gpu_check: unknown section(s) {unknown}. Use names from {list(SECTIONS)}.", file=sys.stderr)
        return 2
    import torch  # after the cheap argument checks: importing torch takes seconds

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible to torch. Run on a CUDA machine, or pass --dry-run to check "
              "the script on this CPU.", file=sys.stderr)
        return 2
    out = args.out.resolve()
    (out / "work").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    budget = args.budget_s if args.budget_s is not None else (None if args.dry_run else GPU_BUDGET_S)
    if args.jobs is None:
        # Sections share nothing but the device: on a GPU one at a time (timings, memory peaks); a dry run's
        # single-threaded sections overlap on a multi-core CPU.
        args.jobs = 1 if not args.dry_run else max(1, min(2, os.cpu_count() or 1))
    start = time.time()
    names = [s for s in SECTIONS if s in wanted and s not in skipped]
    sections = _run_sections(names, args, out, budget, {"dit_instances": args.dit_instances})
    facts = next((s["facts"] for s in sections if s["name"] == "environment"), {})
    packages = facts.get("packages", {})
    report = {
        "schema_version": SCHEMA_VERSION,
        "tool": "scripts/gpu_check.py",
        "mode": "dry-run (CPU, tiny sizes)" if args.dry_run else "cuda",
        "device": facts.get("device") or (f"{torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CPU"),
        "command": " ".join(["python", "scripts/gpu_check.py", *map(shlex.quote, argv)]),
        "started_utc": datetime.datetime.fromtimestamp(start, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": time.time() - start,
        "budget_s": budget,
        "git": _git(),
        "host": platform.node(),
        "software": (f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda})"
                     + "".join(f", {k} {v}" for k, v in packages.items() if k != "torch")),
        "facts": facts,
        "sections": sections,
    }
    report["counts"] = counts(sections)
    report["exit_code"] = exit_code(report, args.strict_goals)
    json_path, md_path = write_report(out, report)
    print()
    for section in sections:
        for check in section["checks"]:
            if check["status"] in ("fail", "miss"):
                print(f"  {check['status'].upper():4s} {section['name']}: {check['name']}: {check['detail'][:200]}")
    c = report["counts"]
    print(f"gpu_check: {c['pass']} pass, {c['fail']} fail, {c['miss']} miss, {c['skip']} skip, {c['info']} info "
          f"in {report['seconds']:.0f} s -> {md_path} and {json_path.name}")
    return report["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
