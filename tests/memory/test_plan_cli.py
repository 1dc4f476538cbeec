"""`lora3d plan` through the real CLI in a subprocess, on GPUs faked with LORA3D_FAKE_GPU_GB (a test seam)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _profile(tmp_path: Path, name: str, **sections) -> Path:
    data = {"schema_version": 1, "model": {"family": "scenesplat", "backbone": "scenesplat"},
            "data": {"synthetic_points": 20_000, "point_budget": 20_000},
            "train": {"batch_size": 2, "grad_accum": 3}}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _plan(path: Path, gb: str, *extra: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "LORA3D_FAKE_GPU_GB": gb}
    return subprocess.run([sys.executable, "-m", "engine", "plan", str(path), *extra], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=timeout)


def _plan_in_process(monkeypatch, capsys, path: Path, gb: str, *extra: str) -> str:
    from engine.cli import main

    monkeypatch.setenv("LORA3D_FAKE_GPU_GB", gb)
    assert main(["plan", str(path), *extra]) == 0
    return capsys.readouterr().out


def test_json_keys_and_types_and_fits_on_a_large_gpu(tmp_path, monkeypatch, capsys):
    out = json.loads(_plan_in_process(monkeypatch, capsys, _profile(tmp_path, "a.yaml"), "80", "--json"))
    for key in ("estimate_bytes", "expected_bytes", "device_bytes", "host_ram_bytes", "budget_bytes", "tokens"):
        assert isinstance(out[key], int), key
    assert out["device"] == "cuda" and out["device_bytes"] == 80 * 1024**3
    assert set(out["breakdown"]) == {"weights", "lora", "gradients", "optimizer", "activations", "overhead"}
    assert all(isinstance(v, int) and v >= 0 for v in out["breakdown"].values())
    assert out["fits"] is True
    rec = out["recommendation"]
    assert {"rank", "micro_batch", "grad_accum", "gradient_checkpointing", "precision", "reasons"} <= set(rec)
    assert rec["micro_batch"] * rec["grad_accum"] == 6
    assert isinstance(rec["reasons"], list) and all(isinstance(r, str) for r in rec["reasons"])
    assert out["tokens"] == 2 * 20_000


def test_subprocess_too_small_gpu_says_does_not_fit_and_overrides_apply(tmp_path):
    path = _profile(tmp_path, "b.yaml", data={"synthetic_points": 150_000, "point_budget": 150_000})
    proc = _plan(path, "4", "--json", "--set", "train.batch_size=6", "train.grad_accum=1")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert isinstance(out["estimate_bytes"], int) and isinstance(out["breakdown"], dict)
    assert out["fits"] is False and out["estimate_bytes"] > out["device_bytes"] == 4 * 1024**3
    assert out["recommendation"]["micro_batch"] * out["recommendation"]["grad_accum"] == 6


def test_text_output_has_the_table_verdict_and_fix(tmp_path, monkeypatch, capsys):
    path = _profile(tmp_path, "t.yaml", data={"synthetic_points": 150_000, "point_budget": 150_000})
    text = _plan_in_process(monkeypatch, capsys, path, "4")
    assert "activations" in text and "with 10% margin" in text
    assert "does not fit" in text and "apply with: --set lora.r=" in text


def test_cpu_mode_reports_no_device_bytes(tmp_path, monkeypatch, capsys):
    out = json.loads(_plan_in_process(monkeypatch, capsys, _profile(tmp_path, "c.yaml"), "0", "--json"))
    assert out["device"] == "cpu" and out["device_bytes"] is None and out["host_ram_bytes"] > 0
    assert out["breakdown"]["overhead"] == 0


@pytest.mark.slow
def test_measure_write_stores_a_correction_used_by_later_plans(tmp_path):
    path = _profile(tmp_path, "d.yaml", model={"backbone": "demo-tiny", "task": "semseg"},
                    data={"synthetic_points": 8000, "point_budget": 8000, "synthetic_train": 2, "synthetic_val": 0},
                    train={"batch_size": 1, "grad_accum": 1, "device": "cpu"})
    proc = _plan(path, "0", "--json", "--measure", "--write", timeout=900)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["written"] is True and out["measured"] and out["measured"][0]["measured_bytes"] > 0
    stored = yaml.safe_load(path.read_text())["hardware"]["measured"]
    assert stored["family"] == "scenesplat" and stored["device"] == "cpu"
    assert stored["correction"] == out["correction_factor"] > 0
    again = json.loads(_plan(path, "0", "--json").stdout)
    assert again["correction"] == pytest.approx(stored["correction"])
