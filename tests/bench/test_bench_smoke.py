"""Tests of the benchmark suite: the shared helpers, run_all's collection and markdown, and a smoke run of every script.

No test asserts a speed or memory number: those come from the benchmark scripts themselves.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import run_all  # noqa: E402

MACHINE = {"cpu": "Test CPU", "nproc": 2, "affinity": 2, "ram_gib": 8.0, "load_avg": [1.0, 2.0, 3.0],
           "torch": "2.x", "threads": 1, "python": "3.x", "gpu": None, "git": "abc1234", "command": "x"}


@pytest.mark.parametrize(
    ("value", "goal", "better", "status"),
    [(0.7, 0.75, "lower", "pass"), (0.8, 0.75, "lower", "miss"), (0.75, 0.75, "lower", "pass"),
     (1.6, 1.5, "higher", "pass"), (1.2, 1.5, "higher", "miss"), (None, 1.0, "lower", "n/a")],
)
def test_goal_row_status(value, goal, better, status):
    row = common.goal_row("r", value, goal, better)
    assert row["status"] == status
    assert row["goal"] == f"{'<=' if better == 'lower' else '>='} {goal:g}x"


def test_ratio_handles_missing_and_zero():
    assert common.ratio(3.0, 2.0) == 1.5
    assert common.ratio(None, 2.0) is None
    assert common.ratio(1.0, 0.0) is None


def test_time_interleaved_rotates_variants_and_counts_calls():
    calls: list[str] = []
    fns = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
    times = common.time_interleaved(fns, warmup=1, repeat=3)
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {k: v["n"] for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(v["min_s"] <= v["median_s"] <= v["max_s"] for v in times.values())


def test_describe_machine_names_cpu_cores_ram_and_torch():
    machine = common.describe_machine(threads=1)
    assert machine["nproc"] >= 1 and machine["ram_gib"] > 0 and machine["threads"] == 1
    assert machine["torch"] and machine["cpu"]
    assert f"nproc {machine['nproc']}" in common.format_machine(machine)


def _write_child_script(tmp_path: Path) -> Path:
    script = tmp_path / "child_bench.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(BENCH)!r})
        import numpy as np
        import common

        def allocate(config):
            memory = common.PeakMemory("cpu")
            memory.start()
            block = np.ones(config["mib"] * 2**18, dtype=np.float32)  # touched pages count in RSS
            return {{"mode": config["mode"], "memory": memory.stop(), "sum": float(block[:4].sum())}}

        def fail(config):
            raise ValueError("boom")

        common.child_entry({{"allocate": allocate, "fail": fail}})
    """))
    return script


def test_run_child_reports_peak_memory_of_a_fresh_process(tmp_path):
    script = _write_child_script(tmp_path)
    result = common.run_child(script, "allocate", {"mib": 200}, timeout_s=120)
    assert result["mode"] == "allocate" and result["sum"] == 4.0
    assert result["memory"]["kind"] == "cpu peak RSS"
    assert 180 <= result["memory"]["extra_mib"] <= 400
    assert result["memory"]["peak_mib"] >= result["memory"]["extra_mib"]


def test_run_child_turns_a_crash_into_an_error_record(tmp_path):
    result = common.run_child(_write_child_script(tmp_path), "fail", {}, timeout_s=120)
    assert result["mode"] == "fail"
    assert "ValueError: boom" in result["error"]


def test_run_bench_collects_rows_failures_and_missing_scripts(tmp_path):
    ok = tmp_path / "ok_bench.py"
    ok.write_text(textwrap.dedent("""
        import json, sys
        out = sys.argv[sys.argv.index("--json-out") + 1]
        print("table of the fake bench")
        rows = [{"name": "x / y", "value": 0.5, "goal": "<= 0.75x", "status": "pass"}]
        json.dump({"rows": rows, "mode": sys.argv[1]}, open(out, "w"))
    """))
    bad = tmp_path / "bad_bench.py"
    bad.write_text("import sys\nprint('about to fail')\nsys.exit(3)\n")
    records = [
        run_all.run_bench(run_all.Bench("ok", str(ok), "--json-out"), "smoke", tmp_path, 60),
        run_all.run_bench(run_all.Bench("bad", str(bad), None), "quick", tmp_path, 60),
        run_all.run_bench(run_all.Bench("gone", "no_such_bench.py", None), "full", tmp_path, 60),
    ]
    assert records[0]["status"] == "ok"
    assert records[0]["json"]["mode"] == "--smoke"
    assert records[0]["rows"][0]["value"] == 0.5
    assert "table of the fake bench" in records[0]["output_tail"]
    assert records[1]["status"] == "failed" and records[1]["note"] == "exit code 3"
    assert "about to fail" in records[1]["output_tail"]
    assert records[2]["status"] == "skipped" and "no_such_bench.py" in records[2]["note"]

    section = run_all.render_markdown(records, MACHINE, "python scripts/bench/run_all.py --quick", "quick")
    assert "| ok | x / y | 0.500 | <= 0.75x | pass |" in section
    assert "| bad | failed: exit code 3 |" in section
    assert "| gone | skipped: no_such_bench.py is not in scripts/bench/ |" in section
    assert "CUDA: not measured yet" in section
    assert "Test CPU, nproc 2" in section and "Load average when the run started: 1.0, 2.0, 3.0" in section


def test_update_doc_replaces_only_the_marked_section(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nintro\n\n" + run_all.START + "\nold numbers\n" + run_all.END + "\n\n## Notes\nkept\n")
    run_all.update_doc(doc, run_all.START + "\nnew numbers\n" + run_all.END + "\n")
    text = doc.read_text()
    assert "old numbers" not in text and "new numbers" in text
    assert text.startswith("# Benchmarks\n\nintro\n") and text.endswith("## Notes\nkept\n")
    fresh = tmp_path / "fresh.md"
    fresh.write_text("# Title\n")
    run_all.update_doc(fresh, run_all.START + "\nrows\n" + run_all.END + "\n")
    assert fresh.read_text() == "# Title\n\n" + run_all.START + "\nrows\n" + run_all.END + "\n"


def test_dit_rows_read_bench_dit_lora_json():
    data = {"train": {"full": {"step_s": 2.0, "extra_mb": 100.0}, "lora": {"step_s": 1.0, "extra_mb": 40.0}},
            "infer": {"base_s": 1.0, "lora_s": 1.2, "merged_s": 1.01}}
    rows = {r["name"]: r for r in run_all._dit_rows(data)}
    assert rows["DiT train step time, LoRA / full"]["value"] == 0.5
    assert rows["DiT train step time, LoRA / full"]["status"] == "pass"
    assert rows["DiT inference time, LoRA unmerged / base"]["status"] == "miss"
    assert rows["DiT train memory above model, LoRA / full"]["value"] == 0.4


@pytest.mark.slow
def test_run_all_smoke_runs_every_script(tmp_path):
    doc = tmp_path / "benchmarks.md"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run_all.py"), "--quick", "--smoke", "--out-dir", str(tmp_path),
         "--write-doc", str(doc)],
        capture_output=True, text=True, timeout=1800, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "run_all.json").read_text())
    records = {r["name"]: r for r in summary["records"]}
    assert set(records) == {b.name for b in run_all.BENCHES}
    failed = {name: r.get("output_tail") for name, r in records.items() if r["status"] == "failed"}
    assert not failed
    for name in ("ptv3_lora", "scenesplat_data", "train_step", "prepare_mesh"):
        assert records[name]["status"] == "ok"
        assert records[name]["rows"], name
    assert "CUDA: not measured yet" in doc.read_text()
