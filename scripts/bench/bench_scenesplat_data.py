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


def _loader(root: Path, workers: int, batch_size: int, grid_size: float):
    import torch

    from engine.families.scenesplat.data import SceneFolderDataset, collate_scenes
    from engine.families.scenesplat.transforms import build_transforms

    dataset = SceneFolderDataset(root, "train", build_transforms("train", grid_size=grid_size), seed=0)
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
    args = parser.parse_args(argv)

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
