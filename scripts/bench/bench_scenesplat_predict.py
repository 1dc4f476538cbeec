"""Provides the check that `lora3d predict` runs a large scene within the memory the planner reports for inference.

1. Writes, once, into `--work`: a random base checkpoint of the profile's backbone (SceneSplat's shape by
   default, semseg with 20 classes), a random LoRA adapter on it (r 8, attention) in a run directory with
   its `profile.resolved.yaml`, and a synthetic room of `--gaussians` Gaussians as an INRIA 3DGS `.ply`
   with the 45 higher-band SH coefficients a real capture has.
2. In a fresh process: the planner's inference mode for that scene and `--memory-gb`
   (`engine.memory.plan.plan_inference`: points per forward pass, expected bytes), then the whole
   `lora3d predict RUN --scene room.ply --out OUT --memory-gb GB --device cpu` in the same process.
   Measured: the kernel's peak RSS (VmHWM) above the level after the imports (the interpreter and torch,
   which the estimate leaves out). Goal: measured <= the planner's estimate (with its 10% margin).

    python scripts/bench/bench_scenesplat_predict.py                          # 1M Gaussians, 4 GB budget
    python scripts/bench/bench_scenesplat_predict.py --gaussians 100000 --backbone demo-tiny --memory-gb 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

import common  # noqa: E402


def _profile(backbone: str, base: Path, run_dir: Path) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "name": "bench-predict",
        "model": {"family": "scenesplat", "task": "semseg", "backbone": backbone, "num_classes": 20,
                  "pretrained": str(base)},
        "lora": {"r": 8, "alpha": 8, "target_modules": ["attn"]},
        "data": {"root": str(run_dir / "data"), "grid_size": 0.02, "val_split": None},
        "train": {"device": "cpu"},
        "output": {"dir": str(run_dir), "tensorboard": False},
    }


def prepare(work: Path, gaussians: int, backbone: str) -> tuple[Path, Path]:
    """The run directory and the scene .ply (made once per settings; reused when present)."""
    import numpy as np
    import plyfile
    import torch

    from engine.families.recipe import resolve_recipe
    from engine.families.scenesplat.options import backbone_config
    from engine.families.scenesplat.ply_import import SH_C0
    from engine.families.scenesplat.synthetic import generate_room
    from engine.lora.inject import apply_lora_spec
    from engine.models.ptv3 import PTv3Segmentor
    from engine.profile import save_profile

    run_dir = work / f"run-{backbone}"
    ply = work / f"room-{gaussians}.ply"
    if not (run_dir / "adapter").is_dir():
        torch.manual_seed(0)
        base = work / f"base-{backbone}.pth"
        model = PTv3Segmentor(backbone_config(backbone), 20)
        torch.save({"epoch": 1, "state_dict": model.state_dict()}, base)
        (run_dir / "data").mkdir(parents=True, exist_ok=True)
        recipe = resolve_recipe(_profile(backbone, base, run_dir), "bench-predict")
        adapted = apply_lora_spec(recipe.family.build_model(recipe), recipe.lora)
        with torch.no_grad():
            for name, param in adapted.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, 0.01)  # a non-zero update, as a trained adapter has
        recipe.family.save_adapter(adapted, run_dir / "adapter", {"family": "scenesplat", "task": "semseg"})
        save_profile(recipe.profile, run_dir / "profile.resolved.yaml")
    if not ply.is_file():
        room = generate_room(np.random.default_rng(0), "A", gaussians)
        n = len(room["coord"])
        names = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)]
                 + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
        data = np.zeros(n, dtype=[(name, "<f4") for name in names])
        for i, axis in enumerate("xyz"):
            data[axis] = room["coord"][:, i]
            data[f"n{axis}"] = room["normal"][:, i]
            data[f"scale_{i}"] = np.log(room["scale"][:, i])
        for i in range(3):
            data[f"f_dc_{i}"] = (room["color"][:, i] / 255.0 - 0.5) / SH_C0
        opacity = np.clip(room["opacity"].astype(np.float64), 1e-4, 1 - 1e-4)
        data["opacity"] = np.log(opacity / (1 - opacity))
        for i in range(4):
            data[f"rot_{i}"] = room["quat"][:, i]
        plyfile.PlyData([plyfile.PlyElement.describe(data, "vertex")]).write(str(ply))
    return run_dir, ply


def _job_predict(config: dict[str, Any]) -> dict[str, Any]:
    """The planner's inference mode, then `lora3d predict` in this fresh process; peak RSS vs the estimate."""
    import argparse as _argparse

    from engine.families.evaluation import load_source
    from engine.families.scenesplat.predict import run_predict
    from engine.memory.plan import plan_inference
    from engine.memory.probe import proc_status_bytes, reset_peak_rss

    gib = 1024**3
    recipe = load_source(config["run_dir"]).recipe
    budget = plan_inference(recipe, scene_points=config["gaussians"], budget_bytes=int(config["memory_gb"] * gib))
    hwm_reset = reset_peak_rss()
    rss_before = proc_status_bytes("VmRSS") or 0
    args = _argparse.Namespace(run_dir=config["run_dir"], scene=config["ply"], out=config["out"], adapter=[],
                               split=None, base=False, query=[], embeddings=None, fragments=False, rotations=1, max_points=None,
                               memory_gb=config["memory_gb"], device="cpu", no_render=False)
    start, cpu_start = time.perf_counter(), time.process_time()
    records = run_predict(args)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = proc_status_bytes("VmHWM") if hwm_reset else None
    if peak is None:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    record = records[0]
    return {"budget": budget.to_dict(), "measured_bytes": int(peak - rss_before), "rss_before_bytes": int(rss_before),
            "seconds": seconds, "cpu_seconds": cpu_seconds, "gaussians": record["gaussians"], "voxels": record["voxels"],
            "forwards": record["forwards"], "max_points_per_forward": record["max_points_per_forward"]}


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    if common.child_entry({"predict": _job_predict}):
        return None
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gaussians", type=int, default=1_000_000)
    parser.add_argument("--backbone", default="scenesplat", help="model.backbone (scenesplat, pointcept, demo-tiny)")
    parser.add_argument("--memory-gb", type=float, default=4.0, help="the inference budget the plan fits")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lora3d-bench-predict"))
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    machine = common.describe_machine(args.threads)
    print(f"SceneSplat predict memory: {args.gaussians} Gaussians, backbone {args.backbone}, budget {args.memory_gb} GB")
    print("machine:", common.format_machine(machine))
    run_dir, ply = prepare(args.work, args.gaussians, args.backbone)
    config = {"run_dir": str(run_dir), "ply": str(ply), "out": str(args.work / "out"), "gaussians": args.gaussians,
              "memory_gb": args.memory_gb, "threads": args.threads}
    res = common.run_child(__file__, "predict", config, timeout_s=7200)
    if "error" in res:
        print("error:", res["error"])
        row = common.goal_row("measured peak / planner estimate", None, 1.0)
    else:
        budget = res["budget"]
        ratio = res["measured_bytes"] / budget["estimate_bytes"]
        print(f"plan: {budget['max_tokens']} points per forward pass, expected {budget['expected_bytes'] / 2**20:.0f} "
              f"MiB, with margin {budget['estimate_bytes'] / 2**20:.0f} MiB (budget {budget['budget_bytes'] / 2**20:.0f} MiB)")
        print(f"predict: {res['gaussians']} Gaussians, {res['voxels']} voxels, {res['forwards']} forward passes of at "
              f"most {res['max_points_per_forward']} points, {res['seconds']:.0f} s ({res['cpu_seconds']:.0f} CPU s); "
              f"peak RSS above imports "
              f"{res['measured_bytes'] / 2**20:.0f} MiB (imports: {res['rss_before_bytes'] / 2**20:.0f} MiB)")
        row = common.goal_row("measured peak / planner estimate (with margin)", ratio, 1.0)
        row["expected_ratio"] = res["measured_bytes"] / budget["expected_bytes"]
    common.print_rows([row])
    payload = {"machine": machine, "result": res, "rows": [row]}
    common.write_json(args.json_out, payload)
    return payload


if __name__ == "__main__":
    main()
