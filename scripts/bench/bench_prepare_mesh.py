"""Provides a benchmark of MIDI data preparation throughput (meshes/s) with 1 and 2 worker processes.

Synthetic raw scenes (`write_synthetic_raw_scenes`: a .ply per instance, image.png, seg.png) are prepared
by `prepare_dataset` (load, check, normalise to the shared scene frame, sample surface points and
normals, resize image and id map, write .npz + manifest) into a fresh output folder per run. Runs
alternate (1 worker, 2 workers, 1, 2, ...) so changing machine load hits both alike; the median run
time gives meshes/s and the 2-worker speed-up.

    python scripts/bench/bench_prepare_mesh.py --quick
    python scripts/bench/bench_prepare_mesh.py --scenes 12 --num-samples 20480 --json-out prepare.json
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

import common  # noqa: E402

GOAL_SPEEDUP_2_WORKERS = 1.5


def _count_meshes(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*/*.npz"))


def _worker_startup_s() -> float:
    """Seconds a fresh interpreter needs to import the prepare module, as each spawned worker does."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import engine.families.midi.prepare"], check=True, cwd=common.REPO)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 scenes, 4096 samples per mesh, 2 repeats")
    parser.add_argument("--smoke", action="store_true", help="2 scenes, 512 samples, 1 repeat: checks the script runs")
    parser.add_argument("--scenes", type=int, default=None, help="raw scenes (default 8)")
    parser.add_argument("--num-samples", type=int, default=None, help="surface samples per mesh (default 20480, MIDI's)")
    parser.add_argument("--image-size", type=int, default=None, help="output image side (default 512, MIDI's)")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per worker count (default 3)")
    parser.add_argument("--workers", default=None, help="comma-separated worker counts (default 1,2; smoke 1)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    from engine.families.midi.prepare import prepare_dataset
    from engine.families.midi.synthetic import write_synthetic_raw_scenes

    scenes = args.scenes or (2 if args.smoke else 4 if args.quick else 8)
    samples = args.num_samples or (512 if args.smoke else 4096 if args.quick else 20480)
    image_size = args.image_size or (64 if args.smoke else 256 if args.quick else 512)
    repeat = args.repeat or (1 if args.smoke else 2 if args.quick else 3)
    worker_counts = [int(w) for w in (args.workers or ("1" if args.smoke else "1,2")).split(",")]
    machine = common.describe_machine()
    print(f"MIDI prepare: {scenes} synthetic raw scenes, {samples} samples per mesh, image {image_size}px, "
          f"{repeat} timed runs per worker count")
    print(f"machine: {common.format_machine(machine)}")

    counter = itertools.count()
    meshes = 0
    with tempfile.TemporaryDirectory(prefix="lora3d-bench-prepare-") as tmp:
        raw = Path(tmp) / "raw"
        write_synthetic_raw_scenes(raw, scenes, image_size=image_size)

        def run(workers: int):
            def go() -> None:
                nonlocal meshes
                out = Path(tmp) / f"out-{next(counter)}"
                report = prepare_dataset(raw, out, num_samples=samples, image_size=image_size, workers=workers,
                                         progress=False)
                if not report.ok:
                    raise RuntimeError(f"prepare_dataset failed on {report.failed}")
                meshes = _count_meshes(out)
                shutil.rmtree(out)

            return go

        times = common.time_interleaved({f"workers_{w}": run(w) for w in worker_counts}, warmup=1, repeat=repeat)
    startup = None if worker_counts == [1] else _worker_startup_s()

    rate = {k: meshes / v["median_s"] for k, v in times.items()}
    speedup = common.ratio(times["workers_1"]["median_s"], times["workers_2"]["median_s"]) if "workers_2" in times else None
    rows = [common.goal_row("prepare throughput, 2 workers / 1 worker", speedup, GOAL_SPEEDUP_2_WORKERS,
                            better="higher")]
    if startup is not None:
        rows.append({"name": "worker start-up (fresh import of the prepare module) / 1-worker run",
                     "value": common.ratio(startup, times["workers_1"]["median_s"]), "goal": "report", "status": "info"})
    print(f"{meshes} meshes per run; " + ", ".join(f"{k.replace('_', ' ')}: {v:.2f} meshes/s" for k, v in rate.items()))
    if startup is not None:
        print(f"a fresh process importing engine.families.midi.prepare takes {startup:.1f} s (paid by every worker)")
    common.print_rows(rows)
    payload = {"bench": "prepare_mesh", "machine": machine,
               "config": {"scenes": scenes, "num_samples": samples, "image_size": image_size, "repeat": repeat},
               "rows": rows, "times": times, "meshes": meshes, "meshes_per_s": rate, "worker_startup_s": startup}
    common.write_json(args.json_out, payload)
    return payload


if __name__ == "__main__":
    main()
