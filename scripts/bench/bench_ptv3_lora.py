"""Provides a benchmark of LoRA vs full fine-tuning on the SceneSplat PTv3 shape, and LoRA vs base inference.

The model is `PTv3Segmentor(SCENESPLAT_CONFIG, 20 classes)` (SceneSplat's channels, depths, heads and
patch size: about 92M parameters) on one synthetic room voxelised at 2 cm through the val transforms,
with a reduced point count (real scenes hold 100k+ points). LoRA is the `standard` preset (r 8, attn
qkv/proj, every encoder stage) plus the trainable head, as the scenesplat family trains it.

- time: every variant is built in ONE process from the same weights and timed round-robin (median of
  `--steps` after `--warmup`), so machine load hits all variants alike. Every call reseeds torch, so
  drop-path and order shuffling draw the same values in every variant. On CPU the ratios use the
  process's CPU seconds (steady under other processes' load), on CUDA synchronised wall seconds.
- memory: each training mode runs again in its own fresh process; the peak is CUDA
  max_memory_allocated or the process's peak RSS above the level after the model was built.
- inference: base, LoRA unmerged (non-zero B, as after training) and merged (`merge_lora_weights`).

    python scripts/bench/bench_ptv3_lora.py --quick          # 2k points, ~minutes on a loaded 2-core CPU
    python scripts/bench/bench_ptv3_lora.py --points 8000 --threads 2 --json-out ptv3_lora.json
    python scripts/bench/bench_ptv3_lora.py --device cuda --points 20000
    python scripts/bench/bench_ptv3_lora.py --profile lora   # torch.profiler top ops of one LoRA train step
    python scripts/bench/bench_ptv3_lora.py --floor --points 4000   # LoRA step / forward and where it goes
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

import common  # noqa: E402

GOALS = {"train_time": 0.75, "infer_unmerged": 1.10, "infer_merged": 1.02}
NUM_CLASSES = 20
TINY = dict(in_channels=11, order=("z", "z-trans"), stride=(2, 2), enc_depths=(1, 1, 1), enc_channels=(16, 32, 64),
            enc_num_head=(1, 2, 4), enc_patch_size=(64, 64, 64), dec_depths=(1, 1), dec_channels=(32, 32),
            dec_num_head=(2, 2), dec_patch_size=(64, 64), drop_path=0.0)
"""`--smoke` model: checks the script end to end in seconds; its numbers mean nothing."""


def _device(config: dict[str, Any]):
    import torch

    name = config["device"]
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _backbone_config(config: dict[str, Any]) -> dict[str, Any]:
    from engine.models.ptv3 import SCENESPLAT_CONFIG

    return dict(TINY if config["smoke"] else SCENESPLAT_CONFIG)


def _batch(config: dict[str, Any], device) -> dict[str, Any]:
    """One synthetic room, voxelised at 2 cm by the val transforms, cut to `points` by a centre crop."""
    import numpy as np

    from engine.families.scenesplat.data import build_sample, collate_scenes
    from engine.families.scenesplat.synthetic import generate_room
    from engine.families.scenesplat.transforms import build_transforms

    room = generate_room(np.random.default_rng(config["seed"]), "A", int(config["points"] * 1.3))
    transforms = build_transforms("val", grid_size=0.02, point_budget=config["points"])
    batch = collate_scenes([transforms(build_sample(room, name="bench_room"), rng=np.random.default_rng(0))])
    return {k: batch[k].to(device) for k in ("coord", "grid_coord", "feat", "offset", "segment")}


def _base_model(config: dict[str, Any]):
    import torch

    from engine.models.ptv3 import PTv3Segmentor

    torch.manual_seed(config["seed"])
    return PTv3Segmentor(_backbone_config(config), NUM_CLASSES)


def _make_lora(model, trained: bool, seed: int):
    """The `standard` preset on `model` (in place), head trainable; `trained` makes B non-zero."""
    import torch

    from engine.lora import inject_lora_with_preset, mark_only_lora_as_trainable

    inject_lora_with_preset(model, "standard")
    mark_only_lora_as_trainable(model)
    model.seg_head.requires_grad_(True)
    if trained:
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model


def _train_step_fn(model, batch: dict[str, Any], seed: int):
    import torch
    import torch.nn.functional as F

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    inputs = {k: v for k, v in batch.items() if k != "segment"}
    model.train()

    def step() -> float:
        torch.manual_seed(seed)  # same drop-path and order shuffle in every call and every variant
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(inputs), batch["segment"])
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step, sum(p.numel() for p in params)


def _job_train_time(config: dict[str, Any]) -> dict[str, Any]:
    """Full vs LoRA training step time, interleaved in this one process."""
    device = _device(config)
    batch = _batch(config, device)
    full = _base_model(config)
    lora = _make_lora(copy.deepcopy(full), trained=False, seed=config["seed"])
    full_step, full_trainable = _train_step_fn(full.to(device), batch, config["seed"])
    lora_step, lora_trainable = _train_step_fn(lora.to(device), batch, config["seed"])
    times = common.time_interleaved({"full": full_step, "lora": lora_step}, config["warmup"], config["steps"], device)
    total = sum(p.numel() for p in full.parameters())
    return {"points": int(batch["coord"].shape[0]), "times": times, "clock": common.timing_key(device),
            "total_params": total,
            "trainable": {"full": full_trainable, "lora": lora_trainable}}


def _job_train_memory(config: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of one training mode (`train_memory:full` or `train_memory:lora`) in this fresh process."""
    mode = config["mode"].split(":")[1]
    device = _device(config)
    batch = _batch(config, device)
    model = _base_model(config)
    if mode == "lora":
        model = _make_lora(model, trained=False, seed=config["seed"])
    model.to(device)
    memory = common.PeakMemory(device)
    memory.start()
    step, trainable = _train_step_fn(model, batch, config["seed"])
    times = common.time_calls(step, warmup=1, repeat=1, device=device)
    return {"mode": mode, "memory": memory.stop(), "times": times, "trainable": trainable}


def _job_infer(config: dict[str, Any]) -> dict[str, Any]:
    """Base vs LoRA-unmerged vs merged forward time, interleaved, and the merged model's output difference."""
    import torch

    from engine.lora import merge_lora_weights

    device = _device(config)
    batch = _batch(config, device)
    inputs = {k: v for k, v in batch.items() if k != "segment"}
    base = _base_model(config).to(device).eval()
    unmerged = _make_lora(copy.deepcopy(base), trained=True, seed=config["seed"]).to(device).eval()
    merged = merge_lora_weights(copy.deepcopy(unmerged)).to(device).eval()

    def forward(model):
        def run() -> torch.Tensor:
            with torch.no_grad():
                return model(inputs)

        return run

    times = common.time_interleaved(
        {"base": forward(base), "unmerged": forward(unmerged), "merged": forward(merged)},
        config["warmup"], config["steps"], device,
    )
    with torch.no_grad():
        diff = (forward(merged)() - forward(unmerged)()).abs().max().item()
        lora_effect = (forward(unmerged)() - forward(base)()).abs().max().item()
    return {"times": times, "clock": common.timing_key(device), "merged_vs_unmerged_max_abs": diff, "lora_vs_base_max_abs": lora_effect}


def _job_profile(config: dict[str, Any]) -> dict[str, Any]:
    """torch.profiler's top operators (self CPU time) of one training step or forward of a mode."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    mode = config["mode"].split(":")[1]
    device = _device(config)
    batch = _batch(config, device)
    model = _base_model(config)
    if mode in ("lora", "unmerged", "merged"):
        model = _make_lora(model, trained=mode != "lora", seed=config["seed"])
    if mode == "merged":
        from engine.lora import merge_lora_weights

        model = merge_lora_weights(model)
    model.to(device)
    if mode in ("full", "lora"):
        fn, _ = _train_step_fn(model, batch, config["seed"])
    else:
        model.eval()
        inputs = {k: v for k, v in batch.items() if k != "segment"}

        def fn() -> None:
            with torch.no_grad():
                model(inputs)

    fn()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    top = [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total,
            "calls": e.count} for e in events[:15]]
    return {"mode": mode, "top": top, "total_ms": total / 1e3}


def _self_ms(fn) -> dict[str, float]:
    """Self CPU ms of one call of `fn` by operator (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}


def _job_floor(config: dict[str, Any]) -> dict[str, Any]:
    """LoRA step / forward of the same model in one process, and where the step's time goes.

    Times round-robin: the forward without gradients (eval, as inference runs), the forward with autograd
    recording (train mode, loss included) and the whole LoRA step. Then profiles one forward and one step
    and splits the step's operator time into the forward's share, SDPA attention backward, matmul backward
    and the rest, so the excess over "2 x forward" can be named.
    """
    import torch
    import torch.nn.functional as F

    device = _device(config)
    batch = _batch(config, device)
    inputs = {k: v for k, v in batch.items() if k != "segment"}
    model = _make_lora(_base_model(config), trained=False, seed=config["seed"]).to(device)
    step, _ = _train_step_fn(model, batch, config["seed"])

    def forward() -> object:
        model.eval()
        with torch.no_grad():
            return model(inputs)

    def forward_grad() -> object:
        model.train()
        torch.manual_seed(config["seed"])
        return float(F.cross_entropy(model(inputs), batch["segment"]).detach())

    times = common.time_interleaved({"forward": forward, "forward_grad": forward_grad, "step": step},
                                    config["warmup"], config["steps"], device)
    fwd_ops, step_ops = _self_ms(forward), _self_ms(step)

    def share(ops: dict[str, float], match) -> float:
        return sum(ms for name, ms in ops.items() if match(name))

    def is_attn(name: str) -> bool:
        return "scaled_dot_product" in name

    attn_fwd = share(fwd_ops, is_attn)
    attn_bwd = share(step_ops, lambda n: is_attn(n) and "backward" in n)
    return {
        "points": int(batch["coord"].shape[0]), "times": times, "clock": common.timing_key(device),
        "profile_ms": {
            "forward_total": sum(fwd_ops.values()), "step_total": sum(step_ops.values()),
            "forward_attention": attn_fwd, "step_attention_backward": attn_bwd,
            "step_attention_forward": share(step_ops, lambda n: is_attn(n) and "backward" not in n),
            "forward_mm": share(fwd_ops, lambda n: n in ("aten::mm", "aten::addmm")),
            "step_mm": share(step_ops, lambda n: n in ("aten::mm", "aten::addmm")),
        },
    }


JOBS = {"train_time": _job_train_time, "train_memory": _job_train_memory, "infer": _job_infer,
        "profile": _job_profile, "floor": _job_floor}


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    if common.child_entry(JOBS):
        return None
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2000 points, 2 timed steps")
    parser.add_argument("--smoke", action="store_true", help="tiny model and 300 points: checks the script runs")
    parser.add_argument("--points", type=int, default=None, help="points after voxelisation (default 8000)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 3)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in every measurement (default 1: steadiest on a shared CPU; 0: torch default)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-memory", action="store_true", help="skip the per-mode memory processes")
    parser.add_argument("--profile", choices=["full", "lora", "base", "unmerged", "merged"], default=None,
                        help="only profile one step of this mode with torch.profiler and print the top ops")
    parser.add_argument("--floor", action="store_true",
                        help="only LoRA step / forward in one process, with the profile split (issue 17)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    points = args.points or (300 if args.smoke else 2000 if args.quick else 8000)
    steps = args.steps or (1 if args.smoke else 2 if args.quick else 3)
    config = {"points": points, "steps": steps, "warmup": args.warmup, "threads": args.threads,
              "device": args.device, "seed": args.seed, "smoke": args.smoke}
    script = Path(__file__).resolve()
    machine = common.describe_machine(args.threads or None)
    model_name = "tiny smoke PTv3" if args.smoke else "PTv3Segmentor(SCENESPLAT_CONFIG)"
    print(f"{model_name}, ~{points} points, {steps} timed steps after {args.warmup} warm-up")
    print(f"machine: {common.format_machine(machine)}")

    if args.profile:
        prof = common.run_child(script, f"profile:{args.profile}", config)
        if "error" in prof:
            print(f"profile failed: {prof['error']}")
        else:
            print(f"top ops of one {args.profile} step (self CPU time, total {prof['total_ms']:.0f} ms):")
            for row in prof["top"]:
                print(f"  {row['op']:<48}{row['self_ms']:>10.1f} ms {100 * row['share']:>5.1f}%  x{row['calls']}")
        payload = {"bench": "ptv3_lora", "machine": machine, "config": config, "profile": prof}
        common.write_json(args.json_out, payload)
        return payload

    if args.floor:
        floor = common.run_child(script, "floor", config)
        if "error" in floor:
            print(f"floor failed: {floor['error']}")
            return {"bench": "ptv3_lora", "machine": machine, "config": config, "floor": floor}
        t = {name: floor["times"][name][floor["clock"]] for name in floor["times"]}
        prof_ms = floor["profile_ms"]
        a = prof_ms["forward_attention"] / prof_ms["forward_total"]
        attn_ratio = prof_ms["step_attention_backward"] / max(prof_ms["forward_attention"], 1e-9)
        print(f"points {floor['points']}; s (median {floor['clock']}): forward {t['forward']:.3f}, forward with "
              f"autograd {t['forward_grad']:.3f}, LoRA step {t['step']:.3f}")
        print(f"profile: attention is {100 * a:.1f}% of the forward; its backward costs {attn_ratio:.2f}x its "
              f"forward; matmuls {prof_ms['forward_mm']:.0f} ms in the forward, {prof_ms['step_mm']:.0f} ms in the step")
        rows = [
            common.goal_row("LoRA step / forward (same model, one process)", common.ratio(t["step"], t["forward"]), 2.2),
            {"name": "forward with autograd / forward", "value": common.ratio(t["forward_grad"], t["forward"]),
             "goal": "report", "status": "info"},
            {"name": "floor if every op's backward cost its forward, but attention's as measured",
             "value": 2 + a * (attn_ratio - 1), "goal": "report", "status": "info"},
        ]
        common.print_rows(rows)
        payload = {"bench": "ptv3_lora", "machine": machine, "config": config, "floor": floor, "rows": rows}
        common.write_json(args.json_out, payload)
        return payload

    train = common.run_child(script, "train_time", config)
    infer = common.run_child(script, "infer", config)
    memory = {} if args.skip_memory else {
        mode: common.run_child(script, f"train_memory:{mode}", config) for mode in ("full", "lora")
    }

    def median(result: dict[str, Any], name: str, clock: str | None = None) -> float | None:
        """The median the ratios use: CPU seconds on CPU, wall seconds on CUDA (`common.timing_key`)."""
        return result["times"][name][clock or result["clock"]] if "times" in result else None

    rows = [
        common.goal_row("train step time, LoRA / full", common.ratio(median(train, "lora"), median(train, "full")),
                        GOALS["train_time"]),
        common.goal_row("inference time, LoRA unmerged / base",
                        common.ratio(median(infer, "unmerged"), median(infer, "base")), GOALS["infer_unmerged"]),
        common.goal_row("inference time, merged / base",
                        common.ratio(median(infer, "merged"), median(infer, "base")), GOALS["infer_merged"]),
    ]
    if memory:
        extra = {m: r.get("memory", {}).get("extra_mib") for m, r in memory.items()}
        rows.append({"name": "train peak memory above model, LoRA / full", "value": common.ratio(extra["lora"], extra["full"]),
                     "goal": "report", "status": "info"})
    for name, result in [("train_time", train), ("infer", infer), *memory.items()]:
        if "error" in result:
            print(f"{name} failed: {result['error']}")
    if "times" in train:
        print(f"points {train['points']}, params {train['total_params']:,}, trainable full "
              f"{train['trainable']['full']:,} / LoRA {train['trainable']['lora']:,}")
        print(f"train step s (median {train['clock']}): full {median(train, 'full'):.3f}, LoRA {median(train, 'lora'):.3f}"
              f" (wall: full {median(train, 'full', 'median_s'):.3f}, LoRA {median(train, 'lora', 'median_s'):.3f})")
    if "times" in infer:
        print(f"forward s (median {infer['clock']}): base {median(infer, 'base'):.3f}, unmerged "
              f"{median(infer, 'unmerged'):.3f}, merged {median(infer, 'merged'):.3f} (wall: base "
              f"{median(infer, 'base', 'median_s'):.3f}, unmerged {median(infer, 'unmerged', 'median_s'):.3f}, merged "
              f"{median(infer, 'merged', 'median_s'):.3f}); max |merged - unmerged| = "
              f"{infer['merged_vs_unmerged_max_abs']:.2e} (LoRA changes outputs by {infer['lora_vs_base_max_abs']:.2e})")
    for mode, result in memory.items():
        if "memory" in result:
            print(f"train memory {mode}: +{result['memory']['extra_mib']:.0f} MiB above model "
                  f"(peak {result['memory']['peak_mib']:.0f} MiB, {result['memory']['kind']})")
    common.print_rows(rows)
    payload = {"bench": "ptv3_lora", "model": model_name, "machine": machine, "config": config, "rows": rows,
               "train": train, "infer": infer, "memory": memory}
    common.write_json(args.json_out, payload)
    return payload


if __name__ == "__main__":
    main()
