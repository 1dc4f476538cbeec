"""scripts/gpu_check.py end to end: the dry run on this CPU (report files, statuses, exit code) and the driver's rules.

The dry run is the same code as the GPU run at tiny sizes, so this is what keeps the GPU check from rotting
between the rare runs on a GPU. The speed section (the benchmarks' smoke runs, about two minutes) is
slow-marked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

SCRIPTS = REPO / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import gpu_check  # noqa: E402
from gpucheck.goldens import CASES  # noqa: E402
from gpucheck.record import Context  # noqa: E402

DRY_SECTIONS = ["environment", "fidelity", "spconv", "training", "memory"]


def _run(*args: str, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / "gpu_check.py"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    proc = _run("--dry-run", "--skip", "speed", "--out", str(out))
    report = json.loads((out / "gpu_check.json").read_text()) if (out / "gpu_check.json").is_file() else None
    md = (out / "gpu_check.md").read_text() if (out / "gpu_check.md").is_file() else ""
    return proc, report, md


def _checks(report: dict, section: str) -> dict[str, dict]:
    return {c["name"]: c for s in report["sections"] if s["name"] == section for c in s["checks"]}


def test_dry_run_passes_and_writes_both_reports(dry_run):
    proc, report, md = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["schema_version"] == 1 and report["mode"].startswith("dry-run") and report["exit_code"] == 0
    assert [s["name"] for s in report["sections"]] == DRY_SECTIONS
    assert report["counts"]["fail"] == 0 and report["counts"]["pass"] >= 25
    assert report["device"].startswith("CPU") and "torch" in report["software"]
    assert md.startswith("# lora3d GPU check: passed")
    for name in DRY_SECTIONS:
        assert f"## {name}: " in md
    assert "| section | status | seconds | CPU seconds | checks |" in md
    assert "0 fail" in proc.stdout


def test_dry_run_checks_every_golden_set_in_fp32_and_bf16(dry_run):
    _, report, _ = dry_run
    checks = _checks(report, "fidelity")
    for case in CASES:
        fp32, bf16 = checks[f"golden fp32: {case.name}"], checks[f"golden bf16 autocast: {case.name}"]
        assert fp32["status"] == "pass" and bf16["status"] == "pass", (fp32, bf16)
        assert all(v.get("finite", True) for v in fp32["values"]["outputs"].values())
    assert checks["sparse conv (pure torch) cpu fp32 vs float64 CPU"]["status"] == "pass"
    picks = checks["SDPA kernel picked by default (equal patches)"]
    assert picks["status"] == "info" and "attention" in picks["detail"]
    assert checks["SDPA flash kernel forced, bf16"]["status"] == "pass"
    assert checks["flash-attn varlen vs SDPA"]["status"] == "skip"


def test_dry_run_trains_through_the_cli_and_recovers(dry_run):
    _, report, _ = dry_run
    checks = _checks(report, "training")
    for family in ("scenesplat", "midi"):
        assert checks[f"{family} demo, bf16"]["status"] == "pass", checks[f"{family} demo, bf16"]
        assert checks[f"{family} demo, fp16"]["status"] == "skip"
        assert "fp16 needs CUDA" in checks[f"{family} demo, fp16"]["detail"]
    resume = checks["resume equals an uninterrupted run"]
    assert resume["status"] == "pass" and resume["values"]["adapter_max_abs"] <= 1e-6
    assert resume["values"]["stopped_steps"] == [1, 2, 3] and resume["values"]["resumed_steps"] == [4, 5, 6]
    oom = checks["OOM recovery keeps the effective batch"]
    assert oom["status"] == "pass", oom
    assert oom["values"]["ooms"] == [[2, 2], [1, 4]] and oom["values"]["final_batch"] == [1, 4]
    assert oom["values"]["adapter_max_abs"] <= 1e-6


def test_dry_run_memory_reports_the_estimates(dry_run):
    _, report, _ = dry_run
    checks = _checks(report, "memory")
    assert len(checks) == 4 and all(c["status"] == "info" for c in checks.values())
    assert all(c["values"]["estimate_bytes"] > 0 for c in checks.values())
    dit = [c for name, c in checks.items() if name.startswith("MIDI DiT")]
    assert dit and all(c["values"]["dit_params_counted"] == c["values"]["dit_params_built"] for c in dit)


def test_unknown_section_is_a_usage_error():
    proc = _run("--sections", "fidelity,nonsense")
    assert proc.returncode == 2 and "unknown section(s) ['nonsense']" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_only_the_dry_run_runs(tmp_path):
    proc = _run("--out", str(tmp_path))
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr and "--dry-run" in proc.stderr
    assert not (tmp_path / "gpu_check.json").exists()


def test_a_spent_budget_skips_sections_and_says_so(tmp_path):
    proc = _run("--dry-run", "--budget-s", "1", "--sections", "environment,training", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [s["status"] for s in report["sections"]] == ["skip", "skip"]
    assert all("time budget (1 s) was spent" in s["checks"][0]["detail"] for s in report["sections"])


def test_a_failing_check_fails_the_run_and_is_named(tmp_path):
    # A broken install of a required package: the environment section must report it as a failure.
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "plyfile.py").write_text("raise RuntimeError('broken plyfile install for the test')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")]))
    proc = _run("--dry-run", "--sections", "environment", "--out", str(tmp_path / "out"), env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    failed = [c for c in report["sections"][0]["checks"] if c["status"] == "fail"]
    assert failed and any("plyfile (RuntimeError: broken plyfile install" in c["detail"] for c in failed)
    assert "FAIL environment" in proc.stdout
    assert (tmp_path / "out" / "gpu_check.md").read_text().startswith("# lora3d GPU check: FAILED")


def _fake_child(tmp_path: Path, monkeypatch, body: str) -> Context:
    """Points the driver's child command at a script of `body` (argv[3] is the context file)."""
    script = tmp_path / "fake_gpu_check.py"
    script.write_text(textwrap.dedent(body))
    monkeypatch.setattr(gpu_check, "__file__", str(script))
    (tmp_path / "work").mkdir()
    (tmp_path / "logs").mkdir()
    return Context("cpu", True, tmp_path, REPO, time.time() + 60)


def _wait(child) -> dict:
    while not child.poll():
        time.sleep(0.05)
    return child.finish()


def test_a_section_past_its_timeout_is_stopped_and_keeps_its_checks(tmp_path, monkeypatch):
    ctx = _fake_child(tmp_path, monkeypatch, """
        import json, sys, time
        from pathlib import Path
        ctx = json.loads(Path(sys.argv[3]).read_text())
        done = {"name": "x", "status": "pass", "detail": "made before the hang", "values": {}}
        Path(ctx["out_dir"], "work", "section-slow.json").write_text(json.dumps({"checks": [done], "facts": {}}))
        print("about to hang", flush=True)
        time.sleep(60)
    """)
    child = gpu_check._Child("slow", ctx, 2.0, tmp_path / "logs" / "slow.log")
    result = _wait(child)
    assert result["seconds"] < 30 and result["status"] == "fail"
    assert [c["status"] for c in result["checks"]] == ["pass", "fail"]
    assert "stopped by its timeout after 2 s" in result["checks"][1]["detail"]
    assert "about to hang" in result["checks"][1]["detail"]


def test_a_crashed_section_is_a_failure_with_its_log_tail(tmp_path, monkeypatch):
    ctx = _fake_child(tmp_path, monkeypatch, """
        import sys
        print("segfault-like crash in the kernel", flush=True)
        sys.exit(3)
    """)
    result = _wait(gpu_check._Child("crash", ctx, 30.0, tmp_path / "logs" / "crash.log"))
    assert result["status"] == "fail" and result["cpu_s"] >= 0
    assert "exited with code 3" in result["note"] and "segfault-like crash" in result["checks"][-1]["detail"]


@pytest.mark.slow
def test_dry_run_speed_section_runs_both_benchmarks(tmp_path):
    proc = _run("--dry-run", "--sections", "speed", "--out", str(tmp_path), timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    checks = _checks(json.loads((tmp_path / "gpu_check.json").read_text()), "speed")
    assert checks["ptv3_lora: run"]["status"] == "pass" and checks["dit_lora: run"]["status"] == "pass"
    assert "ptv3_lora: train step time, LoRA / full" in checks
    assert "dit_lora: DiT inference time, merged / base" in checks
    assert all(c["status"] in ("pass", "info") for c in checks.values())  # dry-run ratios are not judged
