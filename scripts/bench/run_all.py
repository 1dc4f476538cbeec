"""Provides the runner of every lora3d benchmark: runs each script, collects its JSON or output, writes markdown.

Each script runs in its own process, one after another (never in parallel: they would time each other).
Scripts that write JSON (`--json-out`) give result rows (ratio, goal, pass/miss); for the others the
runner keeps the console output. A script that is missing is skipped with a note; a script that fails
is reported with its exit code and the tail of its output, and the others still run.

    python scripts/bench/run_all.py --quick                                  # everything, small sizes
    python scripts/bench/run_all.py --write-doc docs/benchmarks.md           # full sizes, update the doc
    python scripts/bench/run_all.py --only ptv3_lora,train_step --quick
    python scripts/bench/run_all.py --quick --smoke --out-dir /tmp/bench     # seconds per script: does it run?

`--write-doc` replaces the part of the file between `<!-- bench-results:start -->` and
`<!-- bench-results:end -->` (appending both markers when absent) with the machine, the command and the tables.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

import common  # noqa: E402

HERE = Path(__file__).resolve().parent
START, END = "<!-- bench-results:start -->", "<!-- bench-results:end -->"
LORA_GOALS = {"train": 0.75, "unmerged": 1.10, "merged": 1.02}


@dataclass
class Bench:
    """One benchmark script and how to call it in each mode.

    Attributes:
        name: short name (`--only`, table headings).
        script: file name under scripts/bench/.
        json_flag: the script's flag taking a JSON output path; None when it has none.
        full, quick, smoke: extra arguments of each mode (`smoke` is used with `--smoke`).
        rows: turns the script's JSON into result rows (scripts whose JSON already has `rows` need none).
    """

    name: str
    script: str
    json_flag: str | None
    full: list[str] = field(default_factory=list)
    quick: list[str] = field(default_factory=lambda: ["--quick"])
    smoke: list[str] = field(default_factory=lambda: ["--smoke"])
    rows: Any = None


def _dit_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows from bench_dit_lora.py's JSON (`train` per mode, `infer` base/lora/merged seconds)."""
    train, infer = data.get("train", {}), data.get("infer", {})
    full, lora = train.get("full", {}), train.get("lora", {})
    return [
        common.goal_row("DiT train step time, LoRA / full", common.ratio(lora.get("step_s"), full.get("step_s")),
                        LORA_GOALS["train"]),
        {"name": "DiT train memory above model, LoRA / full", "value": common.ratio(lora.get("extra_mb"),
                                                                                  full.get("extra_mb")),
         "goal": "report", "status": "info"},
        common.goal_row("DiT inference time, LoRA unmerged / base", common.ratio(infer.get("lora_s"), infer.get("base_s")),
                        LORA_GOALS["unmerged"]),
        common.goal_row("DiT inference time, merged / base", common.ratio(infer.get("merged_s"), infer.get("base_s")),
                        LORA_GOALS["merged"]),
    ]


def _latent_cache_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows from bench_midi_latent_cache.py's JSON (`results` per variant with `epoch_s`)."""
    results = data.get("results", {})
    fly, warm = results.get("on_the_fly", {}), results.get("cached_warm", {})
    return [{"name": "MIDI epoch time, cached latents / encoding every step",
             "value": common.ratio(warm.get("epoch_s"), fly.get("epoch_s")), "goal": "report", "status": "info"}]


BENCHES = [
    Bench("ptv3_lora", "bench_ptv3_lora.py", "--json-out"),
    Bench("scenesplat_data", "bench_scenesplat_data.py", "--json-out"),
    Bench("train_step", "bench_train_step.py", "--json-out"),
    Bench("prepare_mesh", "bench_prepare_mesh.py", "--json-out"),
    Bench("ptv3_conv", "bench_ptv3_conv.py", None,
          smoke=["--quick", "--points", "600", "--channels", "8", "--patch", "16"]),
    Bench("dit_lora", "bench_dit_lora.py", "--json-out", full=["--threads", "1"], quick=["--quick", "--threads", "1"],
          smoke=["--quick", "--threads", "1", "--steps", "1", "--warmup", "1"], rows=_dit_rows),
    Bench("midi_latent_cache", "bench_midi_latent_cache.py", "--json", smoke=["--quick"], rows=_latent_cache_rows),
    Bench("memory_calibration", "bench_memory_calibration.py", None, smoke=["--quick"]),
    Bench("dashboard_overhead", "bench_dashboard_overhead.py", None, smoke=["--quick"]),
    Bench("previews", "bench_previews.py", "--json-out"),
    Bench("scenesplat_predict", "bench_scenesplat_predict.py", "--json-out",
          quick=["--gaussians", "200000", "--backbone", "pointcept", "--memory-gb", "2"],
          smoke=["--gaussians", "20000", "--backbone", "demo-tiny", "--memory-gb", "0.3"]),
]


def run_bench(bench: Bench, mode: str, out_dir: Path, timeout_s: float) -> dict[str, Any]:
    """Runs one script; returns its record (status, command, seconds, rows, output tail, JSON)."""
    path = HERE / bench.script
    if not path.exists():
        return {"name": bench.name, "status": "skipped", "note": f"{bench.script} is not in scripts/bench/"}
    args = {"full": bench.full, "quick": bench.quick, "smoke": bench.smoke}[mode]
    json_path = out_dir / f"{bench.name}.json"
    json_path.unlink(missing_ok=True)
    cmd = [sys.executable, str(path), *args]
    if bench.json_flag:
        cmd += [bench.json_flag, str(json_path)]
    shown = " ".join(["python", f"scripts/bench/{bench.script}", *args])
    print(f"== {bench.name}: {shown}", flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=common.REPO, check=False)
        code, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        code = None
        output = f"{exc.stdout or ''}{exc.stderr or ''}"
        output = output.decode() if isinstance(output, bytes) else output
    seconds = time.perf_counter() - start
    (out_dir / f"{bench.name}.log").write_text(output)
    record: dict[str, Any] = {"name": bench.name, "command": shown, "seconds": seconds, "exit_code": code,
                              "output_tail": "\n".join(output.strip().splitlines()[-25:])}
    if code != 0:
        record["status"] = "failed"
        record["note"] = f"timed out after {timeout_s:.0f} s" if code is None else f"exit code {code}"
        print(f"   {record['note']}:\n{record['output_tail']}", flush=True)
        return record
    record["status"] = "ok"
    data = json.loads(json_path.read_text()) if bench.json_flag and json_path.exists() else None
    record["json"] = data
    record["rows"] = (bench.rows(data) if bench.rows else data.get("rows", [])) if data else []
    print(f"   ok in {seconds:.0f} s", flush=True)
    return record


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_markdown(records: list[dict[str, Any]], machine: dict[str, Any], command: str, mode: str) -> str:
    """The results section: machine, command, one table of ratios, then each script's console output."""
    load = ", ".join(f"{x:.1f}" for x in machine["load_avg"])
    lines = [
        START,
        f"## Results ({mode} run, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine['cpu']}, nproc {machine['nproc']} (affinity {machine['affinity']}), "
        f"RAM {machine['ram_gib']} GiB, {machine['gpu'] or 'no GPU'}",
        f"- Software: torch {machine['torch']}, Python {machine['python']}, git {machine['git']}",
        f"- Load average when the run started: {load} (1, 5, 15 min)",
        "",
        "| benchmark | result | ratio | goal | status |",
        "|---|---|---|---|---|",
    ]
    for rec in records:
        if rec["status"] != "ok":
            lines.append(f"| {rec['name']} | {rec['status']}: {rec.get('note', '')} | - | - | - |")
            continue
        if not rec["rows"]:
            lines.append(f"| {rec['name']} | see its output below | - | - | - |")
        for row in rec["rows"]:
            lines.append(f"| {rec['name']} | {row['name']} | {_cell(row['value'])} | {row['goal']} | {row['status']} |")
    if not machine["gpu"]:
        lines.append("| ptv3_lora, dit_lora on CUDA | **CUDA: not measured yet**: run `python scripts/bench/run_all.py "
                     "--only ptv3_lora,dit_lora --cuda --write-doc docs/benchmarks.md` on a GPU machine | - | - | - |")
    lines.append("")
    for rec in records:
        if rec["status"] == "skipped":
            continue
        lines += [f"### {rec['name']}", "", f"`{rec['command']}` ({rec['seconds']:.0f} s, {rec['status']})", "",
                  "```text", rec["output_tail"], "```", ""]
    lines.append(END)
    return "\n".join(lines) + "\n"


def update_doc(path: Path, section: str) -> None:
    """Replaces the marked results section of `path` (or appends it)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each script's --quick sizes")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: only checks that every script runs")
    parser.add_argument("--cuda", action="store_true", help="pass --device cuda to the scripts that take it")
    parser.add_argument("--only", default=None, help="comma-separated benchmark names")
    parser.add_argument("--skip", default="", help="comma-separated benchmark names to leave out")
    parser.add_argument("--out-dir", type=Path, default=None, help="JSON and logs of every script (default: a temp dir)")
    parser.add_argument("--write-doc", type=Path, default=None, help="markdown file whose results section is updated")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per script (default 600 smoke, 7200 else)")
    args = parser.parse_args(argv)

    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    names = [b.name for b in BENCHES]
    chosen = args.only.split(",") if args.only else names
    unknown = sorted(set(chosen) - set(names)) + sorted(set(filter(None, args.skip.split(","))) - set(names))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {names}")
    benches = [b for b in BENCHES if b.name in chosen and b.name not in args.skip.split(",")]
    if args.cuda:
        for bench in benches:
            if bench.name in ("ptv3_lora", "dit_lora"):
                for extra in (bench.full, bench.quick, bench.smoke):
                    extra += ["--device", "cuda"]
    machine = common.describe_machine()
    command = " ".join(["python", "scripts/bench/run_all.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"machine: {common.format_machine(machine)}")
    timeout = args.timeout or (600 if args.smoke else 7200)
    with tempfile.TemporaryDirectory(prefix="lora3d-bench-") as tmp:
        out_dir = args.out_dir or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        records = [run_bench(bench, mode, out_dir, timeout) for bench in benches]
        (out_dir / "run_all.json").write_text(json.dumps({"machine": machine, "command": command, "mode": mode,
                                                          "records": records}, indent=2, default=str))
    print(f"{'benchmark':<20}{'status':<9}{'s':>7}  rows")
    for rec in records:
        rows = "; ".join(f"{r['name']}: {_cell(r['value'])} ({r['status']})" for r in rec.get("rows", []))
        print(f"{rec['name']:<20}{rec['status']:<9}{rec.get('seconds', 0):>7.0f}  {rows or rec.get('note', '')}")
    if args.write_doc is not None:
        update_doc(args.write_doc, render_markdown(records, machine, command, mode))
        print(f"wrote the results section of {args.write_doc}")
    return records


if __name__ == "__main__":
    main()
