"""Provides the check of the SceneSplat memory planner's inference estimate against measured peak memory.

For each point count, a fresh child process builds `PTv3Segmentor` at the profile's backbone (SceneSplat's
shape by default, random weights), makes one synthetic room voxelised at 2 cm and cut to the point count
(as bench_ptv3_lora.py does), runs one warm-up forward on a 500-point room (library start-up), resets
the kernel's peak-RSS mark and runs one forward without gradients. Measured: the peak RSS above the
level before that forward, plus the bytes of the model's tensors and of the input batch (resident
before it), as engine.memory.probe measures training. Estimated: `inference_memory` of
engine/families/scenesplat/memory.py for a profile with the same backbone, points and synthetic data.
On CUDA the measured figure is `torch.cuda.max_memory_allocated` (weights and inputs included).

    python scripts/bench/bench_ptv3_memory.py                       # 4k, 16k, 50k points, CPU
    python scripts/bench/bench_ptv3_memory.py --points 4000,16000 --backbone demo-tiny --json-out m.json
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

import common  # noqa: E402

GOAL_TOLERANCE = 0.10
"""|estimate / measured - 1| on CPU for inference (issue 17)."""


def _profile(points: int, backbone: str, device: str) -> Any:
    from engine.families.recipe import resolve_recipe

    return resolve_recipe({
        "schema_version": 1,
        "model": {"family": "scenesplat", "backbone": backbone, "task": "semseg"},
        "data": {"synthetic_points": points, "point_budget": points},
        "train": {"device": device},
    })


def _batch(points: int, seed: int = 0) -> dict[str, Any]:
    """One synthetic room voxelised at 2 cm by the val transforms, cut to `points` (bench_ptv3_lora's input)."""
    import numpy as np

    from engine.families.scenesplat.data import build_sample, collate_scenes
    from engine.families.scenesplat.synthetic import generate_room
    from engine.families.scenesplat.transforms import build_transforms

    room = generate_room(np.random.default_rng(seed), "A", int(points * 1.3))
    transforms = build_transforms("val", grid_size=0.02, point_budget=points)
    batch = collate_scenes([transforms(build_sample(room, name="bench_room"), rng=np.random.default_rng(0))])
    return {k: batch[k] for k in ("coord", "grid_coord", "feat", "offset")}


def _job_infer(config: dict[str, Any]) -> dict[str, Any]:
    """One forward without gradients at `config["points"]` in this fresh process; peak memory and estimate."""
    import torch

    from engine.families.scenesplat.memory import inference_memory
    from engine.memory.probe import proc_status_bytes, reset_peak_rss
    from engine.models.ptv3 import PTv3Segmentor

    device = torch.device(config["device"])
    profile = _profile(config["points"], config["backbone"], device.type)
    estimate = inference_memory(profile, device_type=device.type)
    torch.manual_seed(0)
    model = PTv3Segmentor(profile.options.backbone, profile.options.num_classes).to(device).eval()
    with torch.no_grad():
        model({k: v.to(device) for k, v in _batch(500, seed=1).items()})  # library start-up, small
    batch = {k: v.to(device) for k, v in _batch(config["points"]).items()}
    weights = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    inputs = sum(t.numel() * t.element_size() for t in batch.values())
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    hwm_reset = reset_peak_rss()
    rss_before = proc_status_bytes("VmRSS") or 0
    with torch.no_grad():
        out = model(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
        measured = int(torch.cuda.max_memory_allocated())
        kind = "cuda max_memory_allocated"
    else:
        peak = proc_status_bytes("VmHWM") if hwm_reset else None
        if peak is None:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        measured = int(peak - rss_before + weights + inputs)
        kind = "peak RSS above the level before the forward + weights + inputs"
    return {"points": int(batch["coord"].shape[0]), "estimate": estimate, "measured_bytes": measured, "kind": kind,
            "weights_bytes": weights, "inputs_bytes": inputs, "output_shape": list(out.shape)}


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    if common.child_entry({"infer": _job_infer}):
        return None
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", default="4000,16000,50000", help="comma list of point counts")
    parser.add_argument("--backbone", default="scenesplat", help="model.backbone (scenesplat, pointcept, demo-tiny)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    machine = common.describe_machine(args.threads)
    print(f"SceneSplat inference memory, backbone {args.backbone}, {args.device}")
    print("machine:", common.format_machine(machine))
    results, rows = [], []
    for points in (int(p) for p in args.points.split(",")):
        res = common.run_child(__file__, f"infer:{points}", {"points": points, "backbone": args.backbone,
                                                             "device": args.device, "threads": args.threads})
        results.append(res)
        if "error" in res:
            print(f"{points:>7} points: {res['error']}")
            rows.append(common.goal_row(f"{points} points: estimate / measured", None, 1 + GOAL_TOLERANCE))
            continue
        est = res["estimate"]
        ratio = est["expected"] / res["measured_bytes"]
        parts = ", ".join(f"{k} {v / 2**20:.0f}" for k, v in est.items() if k != "expected")
        print(f"{res['points']:>7} points: estimate {est['expected'] / 2**20:8.1f} MiB ({parts}), "
              f"measured {res['measured_bytes'] / 2**20:8.1f} MiB, ratio {ratio:.3f}", flush=True)
        rows.append({"name": f"{res['points']} points: estimate / measured", "value": ratio,
                     "goal": f"1 +- {GOAL_TOLERANCE:g}",
                     "status": "pass" if abs(ratio - 1) <= GOAL_TOLERANCE else "miss"})
    common.print_rows(rows)
    payload = {"machine": machine, "results": results, "rows": rows}
    common.write_json(args.json_out, payload)
    return payload


if __name__ == "__main__":
    main()
