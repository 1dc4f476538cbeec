"""Provides the training section: `lora3d train` on the device, with mixed precision, OOM recovery and resume.

Every run goes through the real command line (`engine.cli.main(["train", PROFILE, "--set", ...])`, the
entry point of `lora3d train`), in this process so the faults of `gpucheck.faults` can be injected:

1. Both demo profiles (profiles/demo-scenesplat.yaml with a random tiny base, profiles/demo-midi.yaml) for
   a few steps in bf16 and in fp16 (accelerate's GradScaler; fp16 is refused on a CPU, so a dry run skips
   it): the run completes, every loss is finite, the last third of the losses averages below the first
   third, and the adapter is written with trained (non-zero) LoRA B matrices.
2. Resume: the SceneSplat demo in fp32 at micro-batch 1 x grad_accum 4, straight through; again, stopped
   by a Ctrl-C after step `_STOP_AT`, then resumed with `--resume`: the resumed adapter and losses must equal
   the straight run's.
3. OOM recovery: the same run asked at micro-batch 4 x grad_accum 1 under a memory cap of `_CAP_FACTOR` x
   the straight run's peak: the trainer must halve the micro-batch, keep the effective batch (4), finish,
   and (back at micro-batch 1) match the straight run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from engine.cli import EXIT_STOPPED, main
from gpucheck.faults import interrupt_after, measure_peak, memory_cap
from gpucheck.record import Context, Section

_STOP_AT = 3
_CAP_FACTOR = 1.5
"""Cap for the OOM run over the straight run's peak at micro-batch 1: above it (micro-batch 1 fits),
below the twice-as-large peak of micro-batch 2 (activations dominate at these point counts)."""
CPU_TOL = 1e-6
CUDA_TOL = 1e-4
"""Same-settings runs on CUDA differ in the last bits (atomic adds in the sparse conv's backward): the
adapter's max |difference| and each loss's relative difference must stay under this."""


def _sizes(ctx: Context) -> dict[str, Any]:
    if ctx.dry_run:
        return {"steps": 8,
                "scenesplat": ["data.synthetic_train=4", "data.synthetic_val=1", "data.synthetic_points=800"],
                "midi": ["data.synthetic_train_scenes=2", "data.synthetic_val_scenes=1", "data.synthetic_num_samples=256",
                         "data.synthetic_image_size=32", "model.num_tokens=16"],
                "mechanics": ["data.synthetic_train=4", "data.synthetic_val=1", "data.synthetic_points=800"]}
    return {"steps": 24,
            "scenesplat": [],
            "midi": ["data.synthetic_train_scenes=2"],
            "mechanics": ["data.synthetic_train=4", "data.synthetic_val=1", "data.synthetic_points=40000",
                          "data.point_budget=40000", "data.grid_size=0.02"]}


def run(ctx: Context, section: Section) -> None:
    sizes = _sizes(ctx)
    for family in ("scenesplat", "midi"):
        for precision in ("bf16", "fp16"):
            name = f"{family} demo, {precision}"
            if precision == "fp16" and ctx.device != "cuda":
                section.add(name, "skip", "fp16 needs CUDA: the trainer refuses it on a CPU (exit 2)")
                continue
            with section.guard(name):
                _demo_run(ctx, section, name, family, precision, sizes)
    with section.guard("resume and OOM recovery"):
        _mechanics(ctx, section, sizes)


# ------------------------------------------------------------------------------ running the CLI
def _train(ctx: Context, profile: str, out: Path, overrides: list[str], resume: bool = False) -> dict[str, Any]:
    """`lora3d train PROFILE --out OUT --quiet --set ...` in this process; returns the exit code and events."""
    argv = ["train", str(ctx.repo / "profiles" / profile), "--out", str(out), "--quiet", "--set", *overrides]
    if resume:
        argv.append("--resume")
    t0 = time.time()
    code = main(argv)
    result = {"exit_code": code, "seconds": time.time() - t0, **_events(out / "events.jsonl")}
    return result


def _events(path: Path) -> dict[str, Any]:
    """Step losses, OOM events and the end of the last start (a resumed run appends to the same file)."""
    events = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line (docs/events.md)
    starts = [i for i, e in enumerate(events) if e.get("type") == "start"]
    last = events[starts[-1]:] if starts else events
    steps = [e for e in last if e.get("type") == "step"]
    ends = [e for e in last if e.get("type") == "end"]
    return {
        "losses": [float(e["loss"]) for e in steps],
        "steps": [int(e["step"]) for e in steps],
        "ooms": [(e["micro_batch"], e["grad_accum"]) for e in last if e.get("type") == "oom"],
        "final_batch": (steps[-1]["micro_batch"], steps[-1]["grad_accum"]) if steps else None,
        "peak_memory_bytes": max((int(e.get("memory_bytes") or 0) for e in steps), default=0),
        "end": ends[-1].get("status") if ends else None,
        "evals": [e.get("metrics") for e in last if e.get("type") == "eval"],
    }


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    path = run_dir / "adapter" / "adapter_model.safetensors"
    if not path.is_file() or not (run_dir / "adapter" / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{run_dir / 'adapter'}: no PEFT adapter (adapter_model.safetensors + adapter_config.json)")
    return load_file(str(path))


def _decreasing(losses: list[float]) -> tuple[bool, float, float]:
    third = max(1, len(losses) // 3)
    first, last = sum(losses[:third]) / third, sum(losses[-third:]) / third
    return last < first, first, last


# ------------------------------------------------------------------------------ 1. demos
def _demo_run(ctx: Context, section: Section, name: str, family: str, precision: str, sizes: dict) -> None:
    steps = sizes["steps"]
    overrides = [f"train.device={ctx.device}", f"train.mixed_precision={precision}", f"train.max_steps={steps}",
                 "train.checkpoint_every=null", "output.tensorboard=false", *sizes[family]]
    # From the random tiny base, not the demo's pretrained one: this checks the GPU's mechanics (precision,
    # kernels), where a fresh base's falling loss is a clear signal; building the demo bases would take
    # most of the check's time, and a pretrained base's few-step LoRA loss is within its own noise.
    overrides.append("model.demo_base=false")
    if family == "scenesplat":
        overrides += ["train.eval_every=null"]
        profile = "demo-scenesplat.yaml"
    else:
        overrides += [f"train.eval_every={steps // 2}", "data.eval_chamfer_every=0"]
        profile = "demo-midi.yaml"
    out = ctx.work / "runs" / f"{family}-{precision}"
    result = _train(ctx, profile, out, overrides)
    losses = result["losses"]
    problems = []
    if result["exit_code"] != 0 or result["end"] != "completed":
        problems.append(f"exit code {result['exit_code']}, end {result['end']!r}")
    if len(losses) != steps:
        problems.append(f"{len(losses)} step events, expected {steps}")
    if not all(math.isfinite(x) for x in losses):
        problems.append("a non-finite loss")
    down, first, last = _decreasing(losses) if losses else (False, math.nan, math.nan)
    if not down:
        problems.append(f"loss did not decrease: first third {first:.4f}, last third {last:.4f}")
    trained = 0
    try:
        weights = _adapter(out)
        trained = sum(1 for k, v in weights.items() if "lora_B" in k and bool(v.abs().sum() > 0))
        if not trained:
            problems.append("the adapter's LoRA B matrices are all zero (not trained)")
    except FileNotFoundError as exc:
        problems.append(str(exc))
    val = [m.get("val_loss") for m in result["evals"] if m and "val_loss" in m]
    detail = (f"{steps} steps in {result['seconds']:.1f} s; loss {first:.4f} -> {last:.4f} (thirds)"
              + (f"; val_loss {' -> '.join(f'{v:.4f}' for v in val)}" if val else "")
              + f"; peak {result['peak_memory_bytes'] / 2**20:.0f} MiB; {trained} trained LoRA B tensors")
    section.judge(name, not problems, "; ".join(problems) or detail, losses=losses, seconds=result["seconds"],
                  peak_memory_bytes=result["peak_memory_bytes"], val_loss=val, exit_code=result["exit_code"])


# ------------------------------------------------------------------------------ 2, 3. resume and OOM
def _compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    if a.keys() != b.keys() or not a:
        return math.inf
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _loss_diff(a: list[float], b: list[float]) -> float:
    if len(a) != len(b) or not a:
        return math.inf
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))


def _mechanics(ctx: Context, section: Section, sizes: dict) -> None:
    tol = CUDA_TOL if ctx.device == "cuda" else CPU_TOL
    steps = 6
    common = [f"train.device={ctx.device}", "train.mixed_precision=no", f"train.max_steps={steps}",
              "train.warmup_steps=1", "train.checkpoint_every=null", "train.eval_every=null", "output.tensorboard=false",
              "model.demo_base=false", *sizes["mechanics"]]
    one_by_four = [*common, "train.batch_size=1", "train.grad_accum=4"]
    runs = ctx.work / "runs"
    profile = "demo-scenesplat.yaml"

    with measure_peak(ctx.device) as peak:
        straight = _train(ctx, profile, runs / "straight", one_by_four)
    if straight["exit_code"] != 0 or straight["end"] != "completed":
        section.add("resume equals an uninterrupted run", "fail", f"the straight run failed: {straight}")
        section.add("OOM recovery keeps the effective batch", "fail", "no reference run")
        return
    reference = _adapter(runs / "straight")

    with section.guard("resume equals an uninterrupted run"):
        with interrupt_after(_STOP_AT):
            stopped = _train(ctx, profile, runs / "resumed", one_by_four)
        stop_ok = (stopped["exit_code"] == EXIT_STOPPED and stopped["end"] == "stopped"
                   and stopped["steps"][-1:] == [_STOP_AT])
        resumed = _train(ctx, profile, runs / "resumed", one_by_four, resume=True)
        weights = _compare(_adapter(runs / "resumed"), reference)
        losses = _loss_diff(resumed["losses"], straight["losses"][_STOP_AT:])
        ok = stop_ok and resumed["exit_code"] == 0 and resumed["end"] == "completed" and weights <= tol and losses <= tol
        detail = (f"stopped by SIGINT after step {_STOP_AT} (end {stopped['end']!r}), resumed to step {steps}: "
                  f"adapter max |diff| {weights:.2e}, loss rel diff {losses:.2e} (<= {tol:g})")
        section.judge("resume equals an uninterrupted run", ok, detail, adapter_max_abs=weights, loss_rel=losses,
                      stopped_steps=stopped["steps"], resumed_steps=resumed["steps"])

    with section.guard("OOM recovery keeps the effective batch"):
        cap = int(_CAP_FACTOR * max(peak.get("peak_bytes", 0), 1))
        four_by_one = [*common, "train.batch_size=4", "train.grad_accum=1"]
        with memory_cap(ctx.device, cap) as capped:
            oom = _train(ctx, profile, runs / "oom", four_by_one)
        final = oom["final_batch"]
        kept = final is not None and final[0] * final[1] == 4
        problems = []
        if oom["exit_code"] != 0 or oom["end"] != "completed":
            problems.append(f"exit code {oom['exit_code']}, end {oom['end']!r}")
        if not oom["ooms"]:
            problems.append("no out-of-memory happened under the cap (the cap is too high for this model)")
        if not kept:
            problems.append(f"effective batch not kept: final micro-batch x grad_accum {final}")
        weights = math.nan
        if final == (1, 4) and not problems:
            weights = _compare(_adapter(runs / "oom"), reference)
            if not weights <= tol:
                problems.append(f"adapter differs from the micro-batch-1 run by {weights:.2e} (> {tol:g})")
        detail = (f"cap {cap / 2**20:.1f} MiB ({capped['kind']}); straight peak "
                  f"{peak.get('peak_bytes', 0) / 2**20:.1f} MiB; halvings {oom['ooms']}; final {final}; adapter max "
                  f"|diff| vs micro-batch 1 run {weights:.2e}")
        section.judge("OOM recovery keeps the effective batch", not problems, "; ".join(problems) + (": " if problems
                      else "") + detail, cap=capped, straight_peak=peak, ooms=oom["ooms"], final_batch=final,
                      adapter_max_abs=weights)
