"""Provides a benchmark of the engine Trainer's per-step overhead vs a bare PyTorch loop on the same model and data.

Both sides build the model, LoRA and data through the scenesplat family from one recipe (the demo's
tiny PTv3 with random weights, synthetic rooms, no augmentation, no evaluation) and do the same maths
per step: forward, loss, backward, gradient clipping, AdamW step. The Trainer adds its bookkeeping
(a DataLoader per step, per-sample seeds, accelerate's autocast and backward, the loss watchdog, the
LR schedule, a step event with memory read-out in events.jsonl, STOP/SAVE file checks). A Trainer
step is the time between consecutive `after_step` hook calls; setup and the final checkpoint and
adapter save are not counted. Rounds alternate (bare, trainer, bare, trainer, ...) in one process, so
changing machine load hits both alike; the first step of every round is a warm-up. The ratio uses this
process's CPU seconds (both sides run here, without DataLoader workers), which barely move with other
processes' load; wall seconds are printed too.

    python scripts/bench/bench_train_step.py --quick
    python scripts/bench/bench_train_step.py --points 20000 --steps 10 --rounds 3 --json-out train_step.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

import common  # noqa: E402

GOAL_TRAINER_OVER_BARE = 1.10


def _profile(points: int, steps: int, rooms: int, run_dir: Path) -> Any:
    from engine.families.recipe import resolve_recipe

    return resolve_recipe({
        "schema_version": 1,
        "name": "bench-train-step",
        "model": {"family": "scenesplat", "task": "semseg", "backbone": "demo-tiny"},
        "lora": {"r": 8, "alpha": 16, "target_modules": ["attn", "mlp"], "encoder_only": False},
        "data": {"synthetic_points": points, "synthetic_train": rooms, "synthetic_val": 0, "augment": False,
                 "grid_size": 0.05},
        "train": {"max_steps": steps, "batch_size": 2, "lr": 1e-3, "warmup_steps": 0, "device": "cpu", "seed": 0},
        "output": {"dir": str(run_dir), "tensorboard": False},
    })


def _bare_round(recipe: Any) -> tuple[list[float], list[float]]:
    """Step times of a plain loop: the family's model, data and loss, nothing else."""
    import torch

    from engine.lora.inject import apply_lora_spec
    from engine.train import batching

    torch.manual_seed(recipe.profile.train.seed)
    family = recipe.family
    model = apply_lora_spec(family.build_model(recipe), recipe.lora).train()
    train_ds, _ = family.build_datasets(recipe)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.profile.train.lr, weight_decay=recipe.profile.train.weight_decay)
    perm = batching.epoch_permutation(len(train_ds), recipe.profile.train.seed, 0)
    b = recipe.profile.train.batch_size
    times, cpu = [], []
    for step in range(recipe.profile.train.max_steps):
        t0, c0 = time.perf_counter(), time.process_time()
        start = (step * b) % len(perm)
        batch = family.collate([train_ds[i] for i in perm[start : start + b]])
        loss = recipe.task.loss(model, batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, recipe.profile.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return times[1:], cpu[1:]


def _trainer_round(recipe: Any) -> tuple[list[float], list[float]]:
    """Step times of the engine Trainer: intervals between consecutive `after_step` calls."""
    from engine.train.trainer import Trainer, TrainerHooks

    stamps: list[tuple[float, float]] = []
    hooks = TrainerHooks(after_step=lambda _trainer: stamps.append((time.perf_counter(), time.process_time())))
    result = Trainer(recipe, hooks=hooks, install_signal_handlers=False).run()
    if result.status != "completed":
        raise RuntimeError(f"trainer round ended {result.status}")
    pairs = list(zip(stamps, stamps[1:], strict=False))
    return [b[0] - a[0] for a, b in pairs], [b[1] - a[1] for a, b in pairs]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6000-point rooms, 6 steps, 2 rounds")
    parser.add_argument("--smoke", action="store_true", help="800-point rooms, 3 steps, 1 round: checks the script runs")
    parser.add_argument("--points", type=int, default=None, help="Gaussians per synthetic room (default 20000)")
    parser.add_argument("--steps", type=int, default=None, help="steps per round, first one untimed (default 10)")
    parser.add_argument("--rounds", type=int, default=None, help="bare/trainer round pairs (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0: torch default)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    points = args.points or (800 if args.smoke else 6000 if args.quick else 20000)
    steps = args.steps or (3 if args.smoke else 6 if args.quick else 10)
    rounds = args.rounds or (1 if args.smoke else 2 if args.quick else 3)
    rooms = 4
    machine = common.describe_machine()
    print(f"Trainer vs bare loop: demo-tiny PTv3 + LoRA r8 (attn+mlp), batch 2 of {points}-Gaussian rooms, "
          f"{steps} steps x {rounds} rounds")
    print(f"machine: {common.format_machine(machine)}")

    wall: dict[str, list[float]] = {"bare": [], "trainer": []}
    cpu: dict[str, list[float]] = {"bare": [], "trainer": []}
    with tempfile.TemporaryDirectory(prefix="lora3d-bench-trainer-") as tmp:
        for r in range(rounds):
            for name, run in (("bare", _bare_round), ("trainer", _trainer_round)):
                w, c = run(_profile(points, steps, rooms, Path(tmp) / f"{name}-{r}"))
                wall[name] += w
                cpu[name] += c

    times = {name: common.summarize(wall[name], cpu[name]) for name in wall}
    # Both sides run in this process (no DataLoader workers): CPU seconds are steady under other load.
    value = common.ratio(times["trainer"]["cpu_median_s"], times["bare"]["cpu_median_s"])
    rows = [common.goal_row("train step time, engine Trainer / bare loop", value, GOAL_TRAINER_OVER_BARE)]
    print(f"step CPU s (median): bare {times['bare']['cpu_median_s']:.4f}, trainer {times['trainer']['cpu_median_s']:.4f}"
          f" (overhead {1e3 * (times['trainer']['cpu_median_s'] - times['bare']['cpu_median_s']):+.1f} ms); wall: bare "
          f"{times['bare']['median_s']:.4f}, trainer {times['trainer']['median_s']:.4f}")
    common.print_rows(rows)
    payload = {"bench": "train_step", "machine": machine,
               "config": {"points": points, "steps": steps, "rounds": rounds, "threads": args.threads},
               "rows": rows, "times": times}
    common.write_json(args.json_out, payload)
    return payload


if __name__ == "__main__":
    main()
