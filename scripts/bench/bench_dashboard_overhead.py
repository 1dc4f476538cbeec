"""Measures training throughput with the wizard's dashboard attached vs headless (same profile, same steps).

Each trial trains the SceneSplat demo profile (random tiny base, so no base pretraining) in a child
`lora3d train` process; in a dashboard trial the Textual app (headless driver, full rendering) follows
it exactly as on a terminal. Throughput is the median `samples_per_s` of the step events after warm-up.
Trials alternate (headless, dashboard, headless, ...) so drifting machine load hits both alike.

    python scripts/bench/bench_dashboard_overhead.py            # 3 pairs of 30 steps
    python scripts/bench/bench_dashboard_overhead.py --quick    # 1 pair of 8 steps
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

PROFILE = REPO / "profiles" / "demo-scenesplat.yaml"
WARMUP_STEPS = 2


def overrides(steps: int) -> list[str]:
    return ["model.demo_base=false", f"train.max_steps={steps}", "train.eval_every=100000",
            "data.synthetic_val=1"]


def throughput(run_dir: Path) -> float:
    steps = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if '"step"' in line]
    rates = [e["samples_per_s"] for e in steps if e.get("type") == "step" and e["step"] > WARMUP_STEPS]
    if not rates:
        raise SystemExit(f"{run_dir}: no step events after warm-up; see {run_dir / 'train.log'}")
    return statistics.median(rates)


def run_headless(run_dir: Path, steps: int) -> float:
    cmd = [sys.executable, "-m", "engine", "train", str(PROFILE), "--out", str(run_dir), "--quiet",
           "--set", *overrides(steps)]
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return throughput(run_dir)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


CPU: dict[str, list[float]] = {"dashboard": [], "training": []}
"""CPU seconds of the TUI process and of its training child, per dashboard trial."""


def run_dashboard(run_dir: Path, steps: int, size: tuple[int, int]) -> float:
    from engine.hardware import HardwareInfo
    from wizard.app import make_app
    from wizard.screens.dashboard import DashboardScreen

    async def go() -> None:
        app = make_app(probe=HardwareInfo([], 0, {}), start_screen="hardware")
        async with app.run_test(size=size) as pilot:
            screen = DashboardScreen(run_dir, profile_path=PROFILE, overrides=overrides(steps))
            app.switch_to_dashboard(screen)
            while not (screen.state.finished or screen._process_note):
                await pilot.pause(0.25)

    cpu0, child0 = time.process_time(), _children_cpu()
    asyncio.run(go())
    CPU["dashboard"].append(time.process_time() - cpu0)
    CPU["training"].append(_children_cpu() - child0)
    return throughput(run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 pair of trials, 8 steps each")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", default="120x40", help="terminal size of the dashboard, WxH")
    args = parser.parse_args()
    pairs, steps = (1, 8) if args.quick else (args.pairs, args.steps)
    size = tuple(int(v) for v in args.size.split("x"))
    headless, dashboard = [], []
    with tempfile.TemporaryDirectory(prefix="lora3d-bench-") as tmp:
        for i in range(pairs):
            t = time.perf_counter()
            headless.append(run_headless(Path(tmp) / f"headless-{i}", steps))
            print(f"pair {i + 1}: headless  {headless[-1]:.3f} samples/s ({time.perf_counter() - t:.0f} s)", flush=True)
            t = time.perf_counter()
            dashboard.append(run_dashboard(Path(tmp) / f"dashboard-{i}", steps, size))
            print(f"pair {i + 1}: dashboard {dashboard[-1]:.3f} samples/s ({time.perf_counter() - t:.0f} s)", flush=True)
    h, d = statistics.median(headless), statistics.median(dashboard)
    print(json.dumps({"steps": steps, "pairs": pairs, "size": args.size, "headless_samples_per_s": round(h, 4),
                      "dashboard_samples_per_s": round(d, 4), "slowdown_percent": round(100 * (h - d) / h, 2),
                      "dashboard_cpu_s": round(sum(CPU["dashboard"]), 2),
                      "training_cpu_s": round(sum(CPU["training"]), 2),
                      # the child's CPU is known only once it was reaped; None rather than a division by zero
                      "dashboard_cpu_percent_of_training": (round(100 * sum(CPU["dashboard"]) / sum(CPU["training"]), 2)
                                                            if sum(CPU["training"]) > 0 else None)}))


if __name__ == "__main__":
    main()
