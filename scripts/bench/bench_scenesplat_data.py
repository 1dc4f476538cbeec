"""Provides a benchmark of the SceneSplat data path: loader throughput vs the training step it feeds.

Synthetic rooms are written in SceneSplat's on-disk layout (`write_synthetic_dataset`), then read back
through `SceneFolderDataset` + the train transforms (2 cm voxels, augmentations) + `collate_scenes` in a
`DataLoader`, as the trainer reads them. Measured in one process, round-robin so load hits both alike:

- loader: one epoch (scenes/s), with 0 workers; separately with 2 workers (fresh workers per epoch);
- training: LoRA steps of the demo's tiny PTv3 (`demo-tiny`, ~0.33M parameters; r 8 on attn+mlp of every
  stage, head trainable) over the same collated batches; reported per 10k points.

Ratios of in-process work use this process's CPU seconds (steady under other processes' load); the
2-worker loader is timed by the wall clock, as its work happens in other processes. The ratio loader/training says whether the loader can keep up: below 1 one worker hides it entirely.
The step time of the real SceneSplat shape is measured by bench_ptv3_lora.py.

    python scripts/bench/bench_scenesplat_data.py --quick
    python scripts/bench/bench_scenesplat_data.py --scenes 16 --points 20000 --json-out data.json
    python scripts/bench/bench_scenesplat_data.py --real-size --workers 0,2,4   # 1M-Gaussian rooms vs a GPU step
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

import common  # noqa: E402

GOAL_LOADER_OVER_STEP = 1.0
GPU_STEP_S_PER_SCENE = 0.25
"""LoRA step of the SceneSplat shape on one fast GPU, per 192k-point scene (estimate, docs/benchmarks.md:
~185 MFLOP per point per step x 192k points = 35 TFLOP, at ~150 TFLOP/s sustained bf16 on an H100)."""


def _loader(root: Path, workers: int, batch_size: int, grid_size: float, point_budget: int | None = None,
            loop: int = 1):
    import torch

    from engine.families.scenesplat.data import SceneFolderDataset, collate_scenes
    from engine.families.scenesplat.transforms import build_transforms

    transforms = build_transforms("train", grid_size=grid_size, point_budget=point_budget)
    dataset = SceneFolderDataset(root, "train", transforms, seed=0, loop=loop)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_scenes,
                                       num_workers=workers, shuffle=False)


def _tiny_lora_model(seed: int):
    import torch

    from engine.families.scenesplat.options import DEMO_TINY_CONFIG
    from engine.lora import inject_lora_to_ptv3, mark_only_lora_as_trainable
    from engine.models.ptv3 import PTv3Segmentor

    torch.manual_seed(seed)
    model = PTv3Segmentor(dict(DEMO_TINY_CONFIG), 6)
    inject_lora_to_ptv3(model, r=8, lora_alpha=16, target_modules=["attn", "mlp"], encoder_only=False)
    mark_only_lora_as_trainable(model)
    model.seg_head.requires_grad_(True)
    return model.train()


def _timed_epoch(loader) -> dict[str, float]:
    """Wall seconds of one pass over `loader` (workers started by it included) and to its first batch."""
    import time

    start = time.perf_counter()
    first = None
    batches = 0
    for _ in loader:
        batches += 1
        if first is None:
            first = time.perf_counter() - start
    total = time.perf_counter() - start
    return {"total_s": total, "first_batch_s": first or total, "batches": batches}


def _transforms_at(rev: str):
    """engine/families/scenesplat/transforms.py as it was at git revision `rev`, imported under another name."""
    import importlib.util
    import subprocess

    source = subprocess.run(["git", "-C", str(common.REPO), "show", f"{rev}:engine/families/scenesplat/transforms.py"],
                            capture_output=True, text=True, check=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("transforms_before", f.name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    Path(f.name).unlink()
    return module


def real_size(args: argparse.Namespace) -> dict[str, Any]:
    """Loader throughput on 1M-Gaussian rooms with 0, 2 and 4 workers against the GPU step it must feed."""
    import time

    import numpy as np

    from engine.families.scenesplat.data import SceneFolderDataset, collate_scenes
    from engine.families.scenesplat.synthetic import write_synthetic_dataset
    from engine.families.scenesplat.transforms import build_transforms

    scenes = args.scenes or 8
    points = args.points or 1_000_000
    machine = common.describe_machine()
    print(f"SceneSplat data at real size: {scenes} synthetic rooms of {points} Gaussians on surfaces (x{args.loop} "
          f"per epoch), batch {args.batch_size}, grid {args.grid_size} m, point budget {args.point_budget}")
    print(f"machine: {common.format_machine(machine)}")
    with tempfile.TemporaryDirectory(prefix="lora3d-bench-data-") as tmp:
        root = Path(tmp) / "rooms"
        write_synthetic_dataset(root, num_train=scenes, num_val=0, num_points=points)
        # Per-stage CPU seconds of one scene, in this process.
        dataset = SceneFolderDataset(root, "train", None, seed=0)
        transforms = build_transforms("train", grid_size=args.grid_size, point_budget=args.point_budget)
        stages: dict[str, list[float]] = {"load+build": [], "transforms": [], "collate": []}
        voxels = []
        for i in range(scenes):
            t0 = time.process_time()
            sample = dataset[i]
            t1 = time.process_time()
            out = transforms(sample, rng=np.random.default_rng((0, 0, i)))
            t2 = time.process_time()
            collate_scenes([out])
            t3 = time.process_time()
            stages["load+build"].append(t1 - t0)
            stages["transforms"].append(t2 - t1)
            stages["collate"].append(t3 - t2)
            voxels.append(len(out["coord"]))
        per_scene = {k: float(np.median(v)) for k, v in stages.items()}
        cpu_per_scene = sum(per_scene.values())
        before = None
        if args.before_rev:
            # The same samples and draws through both versions of the transforms, round-robin.
            old = _transforms_at(args.before_rev).build_transforms("train", args.grid_size, args.point_budget)
            samples = [dataset[i] for i in range(min(scenes, 4))]

            def run(pipeline):
                return lambda: [pipeline(s, rng=np.random.default_rng((0, 0, i))) for i, s in enumerate(samples)]

            before = common.time_interleaved({"before": run(old), "after": run(transforms)}, warmup=1, repeat=3)
            print(f"transforms CPU s per scene: {args.before_rev} {before['before']['cpu_median_s'] / len(samples):.3f}, "
                  f"now {before['after']['cpu_median_s'] / len(samples):.3f}")
        epochs = {}
        # `loop` repeats the rooms so every worker serves several batches (files in the page cache,
        # as from the second epoch of a real run).
        items = scenes * args.loop
        for workers in args.workers:
            loader = _loader(root, workers, args.batch_size, args.grid_size, args.point_budget, args.loop)
            epochs[workers] = _timed_epoch(loader)
    required = 1.0 / args.gpu_step_s
    rows = []
    print("per scene (median CPU s): " + ", ".join(f"{k} {v:.3f}" for k, v in per_scene.items())
          + f"; total {cpu_per_scene:.3f} s; {np.mean(voxels):.0f} points per scene after voxels and crop")
    print(f"GPU step it must keep up with: {args.gpu_step_s:.3f} s per scene -> {required:.2f} scenes/s")
    for workers, epoch in epochs.items():
        steady = (items - args.batch_size) / max(epoch["total_s"] - epoch["first_batch_s"], 1e-9)
        rate = items / epoch["total_s"]
        print(f"  {workers} workers: {rate:.2f} scenes/s over the epoch (first batch after "
              f"{epoch['first_batch_s']:.2f} s), {steady:.2f} scenes/s after it")
        rows.append(common.goal_row(f"loader, {workers} workers: scenes/s over the epoch / required",
                                    common.ratio(rate, required), 1.0, better="higher"))
    if before is not None:
        rows.append({"name": f"transforms CPU time, now / {args.before_rev}",
                     "value": common.ratio(before["after"]["cpu_median_s"], before["before"]["cpu_median_s"]),
                     "goal": "report", "status": "info"})
    rows.append({"name": "workers needed at this CPU cost (per-scene CPU s x required rate)",
                 "value": cpu_per_scene * required, "goal": "report", "status": "info"})
    common.print_rows(rows)
    payload = {"bench": "scenesplat_data_real_size", "machine": machine, "per_scene_cpu_s": per_scene,
               "points_after_voxels": voxels, "epochs": {str(k): v for k, v in epochs.items()},
               "gpu_step_s": args.gpu_step_s, "rows": rows}
    common.write_json(args.json_out, payload)
    return payload


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 rooms of 6000 Gaussians, 2 repeats")
    parser.add_argument("--smoke", action="store_true", help="4 rooms of 800 Gaussians, 1 repeat: checks the script runs")
    parser.add_argument("--scenes", type=int, default=None, help="rooms in the split (default 16)")
    parser.add_argument("--points", type=int, default=None, help="Gaussians per room (default 20000)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--grid-size", type=float, default=0.02)
    parser.add_argument("--repeat", type=int, default=None, help="timed epochs (default 3)")
    parser.add_argument("--skip-workers", action="store_true", help="skip the 2-worker loader run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0: torch default)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--real-size", action="store_true",
                        help="1M-Gaussian rooms (default 8), loader with --workers vs --gpu-step-s (issue 17)")
    parser.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[0, 2, 4],
                        help="real size: worker counts to time (default 0,2,4)")
    parser.add_argument("--before-rev", default=None, help="real size: also time the transforms of this git revision")
    parser.add_argument("--loop", type=int, default=6, help="real size: passes over the rooms per timed epoch")
    parser.add_argument("--point-budget", type=int, default=192_000,
                        help="real size: SphereCrop budget after voxels (SceneSplat's 192000)")
    parser.add_argument("--gpu-step-s", type=float, default=GPU_STEP_S_PER_SCENE,
                        help="real size: GPU LoRA step seconds per scene the loader must keep up with")
    args = parser.parse_args(argv)
    if args.real_size:
        if args.threads > 0:
            import torch

            torch.set_num_threads(args.threads)
        return real_size(args)

    import torch
    import torch.nn.functional as F

    from engine.families.scenesplat.synthetic import write_synthetic_dataset

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    scenes = args.scenes or (4 if args.smoke else 8 if args.quick else 16)
    points = args.points or (800 if args.smoke else 6000 if args.quick else 20000)
    repeat = args.repeat or (1 if args.smoke else 2 if args.quick else 3)
    machine = common.describe_machine()
    print(f"SceneSplat data: {scenes} synthetic rooms of {points} Gaussians, batch {args.batch_size}, "
          f"grid {args.grid_size} m, {repeat} timed epochs")
    print(f"machine: {common.format_machine(machine)}")

    with tempfile.TemporaryDirectory(prefix="lora3d-bench-data-") as tmp:
        root = Path(tmp) / "rooms"
        write_synthetic_dataset(root, num_train=scenes, num_val=0, num_points=points)
        loader = _loader(root, 0, args.batch_size, args.grid_size)
        batches = list(loader)
        batch_points = [int(b["coord"].shape[0]) for b in batches]
        model = _tiny_lora_model(0)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

        def load_epoch() -> None:
            for _ in loader:
                pass

        def train_epoch() -> None:
            for batch in batches:
                torch.manual_seed(0)
                optimizer.zero_grad(set_to_none=True)
                inputs = {k: batch[k] for k in ("coord", "grid_coord", "feat", "offset")}
                F.cross_entropy(model(inputs), batch["segment"]).backward()
                optimizer.step()

        times = common.time_interleaved({"loader_w0": load_epoch, "train": train_epoch}, warmup=1, repeat=repeat)
        if not args.skip_workers:
            workers = _loader(root, 2, args.batch_size, args.grid_size)
            times["loader_w2"] = common.time_calls(lambda: [None for _ in workers], warmup=1, repeat=repeat)

    total_points = sum(batch_points)
    # Both in this process: CPU seconds are steady under load; the 2-worker loader needs wall time.
    loader_s = times["loader_w0"]["cpu_median_s"]
    train_s = times["train"]["cpu_median_s"]
    step_per_10k = train_s / total_points * 10_000
    rows = [
        common.goal_row("loader epoch (0 workers) / tiny-model LoRA training epoch", common.ratio(loader_s, train_s),
                        GOAL_LOADER_OVER_STEP),
    ]
    if "loader_w2" in times:
        rows.append({"name": "loader throughput, 2 workers / 0 workers",
                     "value": common.ratio(times["loader_w0"]["median_s"], times["loader_w2"]["median_s"]), "goal": "report", "status": "info"})
    print(f"points after voxelisation: {total_points} in {len(batches)} batches "
          f"({total_points / scenes:.0f} per room)")
    print(f"loader, 0 workers: {scenes / loader_s:.2f} scenes/s ({loader_s:.3f} CPU s per epoch, "
          f"{times['loader_w0']['median_s']:.3f} s wall)")
    if "loader_w2" in times:
        print(f"loader, 2 workers: {scenes / times['loader_w2']['median_s']:.2f} scenes/s "
              f"(workers started every epoch)")
    print(f"training, tiny PTv3 + LoRA: {train_s:.3f} CPU s per epoch ({times['train']['median_s']:.3f} s wall), "
          f"{step_per_10k:.3f} CPU s per 10k points")
    common.print_rows(rows)
    payload = {"bench": "scenesplat_data", "machine": machine,
               "config": {"scenes": scenes, "points": points, "batch_size": args.batch_size, "grid_size": args.grid_size,
                          "repeat": repeat, "threads": args.threads},
               "rows": rows, "times": times, "total_points": total_points,
               "scenes_per_s": {"loader_w0_cpu": scenes / loader_s,
                                **{k + "_wall": scenes / v["median_s"] for k, v in times.items() if k.startswith("loader")}},
               "train_s_per_10k_points_tiny": step_per_10k}
    common.write_json(args.json_out, payload)
    return payload


if __name__ == "__main__":
    main()
