"""Provides the GPU check's report: the JSON document and its markdown rendering (format in docs/gpu.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gpucheck.record import STATUSES

SCHEMA_VERSION = 1


def section_status(checks: list[dict[str, Any]]) -> str:
    """fail > miss > pass > skip > info: the worst judged status of a section's checks."""
    found = {c["status"] for c in checks}
    for status in ("fail", "miss", "pass", "skip"):
        if status in found:
            return status
    return "info"


def counts(sections: list[dict[str, Any]]) -> dict[str, int]:
    out = dict.fromkeys(STATUSES, 0)
    for section in sections:
        for check in section["checks"]:
            out[check["status"]] += 1
    return out


def exit_code(report: dict[str, Any], strict_goals: bool) -> int:
    """1 when a check failed (or a goal was missed under --strict-goals), else 0."""
    c = report["counts"]
    return 1 if c["fail"] or (strict_goals and c["miss"]) else 0


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict[str, Any]) -> str:
    """The human report: header (device, command, verdict), a summary table, then one table per section."""
    c = report["counts"]
    verdict = "FAILED" if report["exit_code"] else "passed"
    lines = [
        f"# lora3d GPU check: {verdict}",
        "",
        f"- device: {report['device']}",
        f"- mode: {report['mode']}; {report['seconds']:.0f} s; started {report['started_utc']} UTC; git {report['git']}",
        f"- command: `{report['command']}`",
        f"- software: {report['software']}",
        f"- checks: {c['pass']} pass, {c['fail']} fail, {c['miss']} miss, {c['skip']} skip, {c['info']} info",
        "",
        "| section | status | seconds | CPU seconds | checks |",
        "|---|---|---|---|---|",
    ]
    for s in report["sections"]:
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.0f} | {s.get('cpu_s', 0):.0f} | {len(s['checks'])} |")
    for s in report["sections"]:
        lines += ["", f"## {s['name']}: {s['status']}", ""]
        if s.get("note"):
            lines += [s["note"], ""]
        lines += ["| check | status | detail |", "|---|---|---|"]
        lines += [f"| {_cell(ch['name'])} | {ch['status']} | {_cell(ch['detail'])} |" for ch in s["checks"]]
    lines += ["", "Statuses: pass / fail (exit 1) / miss (a goal not met; exit 1 only with --strict-goals) / "
              "skip (not run, reason given) / info (measured, not judged). Numbers: gpu_check.json.", ""]
    return "\n".join(lines)


def write_report(out_dir: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """Writes gpu_check.json and gpu_check.md into `out_dir` (each through a temporary file and a rename)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / "gpu_check.json", out_dir / "gpu_check.md"
    for path, text in zip(paths, (json.dumps(report, indent=1, default=str), render_markdown(report))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return paths
