"""Provides the speed section: scripts/bench's LoRA benchmarks at real sizes on CUDA, through run_all's runner.

- bench_ptv3_lora.py: PTv3 with SceneSplat's configuration on a synthetic room of `_PTV3_POINTS` points,
  LoRA vs full training step and inference base / unmerged / merged, each mode's peak memory in its own
  process;
- bench_dit_lora.py: MIDI's DiT at TripoSG's full width (2048 wide, 21 layers, 16 heads), one scene of
  `_DIT_INSTANCES` instances of 2048 latent tokens with 257 DINOv2-sized condition tokens, LoRA vs full
  and inference base / unmerged / merged.

Each benchmark's own goals (LoRA step <= 0.75 x full, unmerged inference <= 1.10 x base, merged <= 1.02 x)
become `pass` / `miss`; a measurement that failed inside a benchmark is a `fail`. A dry run uses the
benchmarks' own smoke sizes on the CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from gpucheck.record import Context, Section

_PTV3_POINTS = 100_000
_DIT_INSTANCES = 2


def _benches(ctx: Context, run_all: Any) -> list[Any]:
    """The two benchmarks with this run's arguments (run_all's `full` mode slot carries them)."""
    if ctx.dry_run:
        ptv3 = ["--smoke", "--skip-memory", "--device", "cpu"]
        dit = ["--quick", "--threads", "1", "--steps", "1", "--warmup", "0", "--device", "cpu"]
    else:
        ptv3 = ["--device", "cuda", "--points", str(_PTV3_POINTS), "--steps", "3", "--warmup", "1", "--threads", "0"]
        dit = ["--device", "cuda", "--width", "2048", "--heads", "16", "--layers", "21", "--tokens", "2048",
               "--scenes", "1", "--instances", str(_DIT_INSTANCES), "--cond-tokens", "257", "--cond-dim", "1024",
               "--steps", "3", "--warmup", "1"]
    return [run_all.Bench("ptv3_lora", "bench_ptv3_lora.py", "--json-out", full=ptv3),
            run_all.Bench("dit_lora", "bench_dit_lora.py", "--json-out", full=dit, rows=run_all._dit_rows)]


def _errors(data: Any, path: str = "") -> list[str]:
    """Every `error` a benchmark recorded inside its JSON (a child measurement that failed)."""
    found = []
    if isinstance(data, dict):
        for key, value in data.items():
            if key == "error":
                found.append(f"{path or 'result'}: {value}"[:200])
            else:
                found += _errors(value, f"{path}.{key}" if path else key)
    return found


def run(ctx: Context, section: Section) -> None:
    bench_dir = ctx.repo / "scripts" / "bench"
    if str(bench_dir) not in sys.path:
        sys.path.insert(0, str(bench_dir))
    import run_all  # scripts/bench/run_all.py: the project's benchmark runner

    out = ctx.work / "bench"
    out.mkdir(parents=True, exist_ok=True)
    benches = _benches(ctx, run_all)
    for i, bench in enumerate(benches):
        # Each benchmark gets an equal share of what is left, so a slow first one cannot starve the second.
        timeout = max(30.0, ctx.seconds_left() / (len(benches) - i) - 5)
        record = run_all.run_bench(bench, "full", Path(out), timeout)
        with section.guard(f"{bench.name}: results"):
            _report(section, bench.name, record, ctx.dry_run)


def _report(section: Section, name: str, record: dict[str, Any], dry_run: bool) -> None:
    if record["status"] != "ok":
        section.add(f"{name}: run", "fail", f"{record.get('note')}: {record.get('output_tail', '')[-300:]}",
                    command=record.get("command"))
        return
    data = record.get("json") or {}
    failed = _errors(data)
    section.judge(f"{name}: run", not failed, f"`{record['command']}` in {record['seconds']:.0f} s"
                  + (f"; failed inside: {'; '.join(failed)}" if failed else ""), command=record["command"])
    for row in record.get("rows") or []:
        status = {"pass": "pass", "miss": "miss", "n/a": "fail"}.get(row["status"], "info")
        if dry_run and status in ("pass", "miss"):
            status = "info"  # smoke sizes on a CPU: the ratios mean nothing
        value = "-" if row["value"] is None else f"{row['value']:.3f}"
        section.add(f"{name}: {row['name']}", status, f"{value} (goal {row['goal']})", value=row["value"],
                    goal=row["goal"])
    section.add(f"{name}: raw numbers", "info", _summary(name, data), result=_compact(data))


def _summary(name: str, data: dict[str, Any]) -> str:
    """One line of absolute numbers (seconds, MiB) behind the ratios."""
    if name == "dit_lora":
        train, infer = data.get("train", {}), data.get("infer", {})
        parts = [f"{mode} step {1e3 * r['step_s']:.0f} ms, +{r['extra_mb']:.0f} MiB"
                 for mode, r in train.items() if "step_s" in r]
        if "base_s" in infer:
            parts.append(f"inference base {1e3 * infer['base_s']:.1f} ms, unmerged {1e3 * infer['lora_s']:.1f} ms, "
                         f"merged {1e3 * infer['merged_s']:.1f} ms")
        return "; ".join(parts)
    train, infer = data.get("train", {}), data.get("infer", {})
    parts = []
    if "times" in train:
        clock = train["clock"]
        parts.append(f"{train['points']} points; train step full {train['times']['full'][clock]:.3f} s, "
                     f"LoRA {train['times']['lora'][clock]:.3f} s")
    if "times" in infer:
        clock = infer["clock"]
        parts.append("forward " + ", ".join(f"{k} {v[clock]:.3f} s" for k, v in infer["times"].items()))
    for mode, result in (data.get("memory") or {}).items():
        if "memory" in result:
            parts.append(f"train memory {mode} +{result['memory']['extra_mib']:.0f} MiB")
    return "; ".join(parts)


def _compact(data: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's JSON without its machine block (the report has the device once)."""
    return {k: v for k, v in data.items() if k not in ("machine",)}
