"""Runs the PTv3 conv/attention benchmark script at a tiny size and checks its table."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "bench" / "bench_ptv3_conv.py"


def test_bench_script_prints_a_ratio_table(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--quick", "--points", "600", "--channels", "8", "--patch", "16"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    out = capsys.readouterr().out
    assert "x conv fwd" in out
    rows = {line[:52].strip(): line[52:].split() for line in out.splitlines()[2:]}
    assert rows["subm conv k=3 torch, forward"][1] == "1.00"
    assert float(rows["attention SDPA batched patches, K=16"][0]) > 0
    spconv_row = rows["subm conv k=3 spconv CPU (1 thread), forward"]
    assert spconv_row[0] == "skipped:" or float(spconv_row[0]) > 0
