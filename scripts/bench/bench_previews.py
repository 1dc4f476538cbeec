"""Measures what previews cost a demo run: wall time with previews on vs off, for both built-in demos.

Each trial trains the demo profile (`profiles/demo-*.yaml`, default preview settings) in this process through
the Trainer, into a fresh run directory; trials alternate (off, on, off, on, ...) so drifting machine load
hits both alike. A warm-up run per demo first builds what both modes share (the demo base, the synthetic
data, MIDI's latent cache) and is not counted. Reported per demo: median wall time per mode, the previews'
own seconds (the sum of the `preview` events' `seconds`), the rounds drawn, and the ratio on / off
(goal: <= 1.10, previews cost at most 10% of a demo run).

    python scripts/bench/bench_previews.py              # 2 pairs per demo
    python scripts/bench/bench_previews.py --pairs 5    # the figures in docs/benchmarks.md (a noisy machine)
    python scripts/bench/bench_previews.py --quick      # 1 pair per demo
    python scripts/bench/bench_previews.py --smoke      # random tiny bases, 4 steps, no warm-up: does it run?
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from engine.families.recipe import load_recipe  # noqa: E402
from engine.train.prerequisites import ensure_prerequisites  # noqa: E402
from engine.train.trainer import train  # noqa: E402

DEMOS = {"scenesplat": common.REPO / "profiles" / "demo-scenesplat.yaml",
         "midi": common.REPO / "profiles" / "demo-midi.yaml"}
GOAL = 1.10
SMOKE = ["model.demo_base=false", "train.max_steps=4", "train.eval_every=2"]


def one_run(profile: Path, overrides: list[str], out: Path, previews: bool) -> dict[str, Any]:
    recipe = load_recipe(profile, [*overrides, f"output.dir={out}", f"previews.enabled={str(previews).lower()}"])
    ensure_prerequisites(recipe)
    start = time.perf_counter()
    train(recipe, install_signal_handlers=False)
    wall = time.perf_counter() - start
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    rounds = [e for e in events if e["type"] == "preview"]
    return {"wall_s": wall, "preview_s": sum(e["seconds"] for e in rounds), "rounds": len(rounds),
            "items": sum(len(e["items"]) for e in rounds), "skipped": sum(len(e["skipped"]) for e in rounds),
            "evals": sum(e["type"] == "eval" for e in events),
            "pngs": [e["items"][0]["png"] for e in rounds if e["items"]]}


def bench_demo(name: str, pairs: int, overrides: list[str], root: Path, warmup: bool = True) -> dict[str, Any]:
    profile = DEMOS[name]
    if warmup:
        one_run(profile, overrides, root / f"{name}-warmup", previews=False)
    trials: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for pair in range(pairs):
        for mode in ("off", "on"):
            result = one_run(profile, overrides, root / f"{name}-{mode}-{pair}", previews=mode == "on")
            trials[mode].append(result)
            print(f"{name} previews {mode}: {result['wall_s']:.1f} s, previews {result['preview_s']:.2f} s in "
                  f"{result['rounds']} rounds ({result['items']} items, {result['skipped']} skipped), "
                  f"{result['evals']} evaluations", flush=True)
    off = statistics.median(t["wall_s"] for t in trials["off"])
    on = statistics.median(t["wall_s"] for t in trials["on"])
    share = statistics.median(t["preview_s"] / t["wall_s"] for t in trials["on"])
    return {"off_s": off, "on_s": on, "ratio": on / off, "preview_share": share, "trials": trials,
            "run_dir": str(root / f"{name}-on-0")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one pair of runs per demo")
    parser.add_argument("--smoke", action="store_true", help="random tiny bases, 4 steps, one pair")
    parser.add_argument("--pairs", type=int, default=2, help="off/on pairs per demo (more: less noise; default 2)")
    parser.add_argument("--only", choices=sorted(DEMOS), help="one demo")
    parser.add_argument("--out-dir", type=Path, default=None, help="keep the run directories here")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    pairs = 1 if args.quick or args.smoke else args.pairs
    overrides = SMOKE if args.smoke else []
    machine = common.describe_machine()
    print(common.format_machine(machine), flush=True)
    root = args.out_dir or Path(tempfile.mkdtemp(prefix="bench-previews-"))
    results = {name: bench_demo(name, pairs, overrides, root, warmup=not args.smoke) for name in ([args.only] if args.only else DEMOS)}
    rows = []
    for name, r in results.items():
        rows.append(common.goal_row(f"{name} demo wall time, previews on / off", r["ratio"], GOAL))
        rows.append({"name": f"{name} demo: preview seconds / wall time", "value": r["preview_share"],
                     "goal": "report", "status": "info"})
        print(f"{name}: off {r['off_s']:.1f} s, on {r['on_s']:.1f} s, previews {r['preview_share']:.1%} of the run; "
              f"pictures in {r['run_dir']}/previews")
    common.print_rows(rows)
    common.write_json(args.json_out, {"machine": machine, "results": results, "rows": rows})


if __name__ == "__main__":
    main()
