"""Runs `lora3d train` / `merge` in-process on a real small filesystem and reports what happened, as JSON.

Started by tests/reliability/test_disk_full.py inside a user namespace (`unshare -rm`) where it has mounted
a small tmpfs at MOUNT: first the run fills the filesystem part-way, then space is freed and the run is
resumed, then the filesystem is remounted read-only and a new run, a resume and a merge are tried. Nothing
here asserts: the test reads the report.

Usage: python -m tests.reliability.small_fs_driver MOUNT PROFILE_JSON REPORT_JSON
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from engine.atomic import atomic_file
from engine.cli import main as cli_main
from engine.train.checkpoint import MANIFEST, list_checkpoints
from engine.train.events import read_events
from tests.toy_family import ToyFamily

FILLER_BYTES = 96 * 1024


def _cli(args: list[str]) -> dict[str, Any]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli_main([str(a) for a in args])
        except BaseException as exc:  # a traceback the CLI let through: report it, do not hide it
            return {"code": "raised", "err": f"{type(exc).__name__}: {exc}"}
    return {"code": code, "err": err.getvalue()}


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def _state(run: Path) -> dict[str, Any]:
    root = run / "checkpoints"
    complete = list_checkpoints(root)
    newest = complete[-1] if complete else None
    manifest_ok = False
    if newest is not None:
        info = json.loads((newest / MANIFEST).read_text())
        manifest_ok = all((newest / n).stat().st_size == size for n, size in info["files"].items())
    return {
        "folders": sorted(p.name for p in root.iterdir()) if root.is_dir() else [],
        "complete": [p.name for p in complete],
        "newest_manifest_ok": manifest_ok,
        "newest_digest": _digest(newest) if newest else None,
        "hidden": sorted(p.name for p in run.iterdir() if p.name.startswith(".")),
        "last_event": (read_events(run / "events.jsonl") or [{}])[-1] if (run / "events.jsonl").is_file() else None,
    }


def _merge_like_a_family(self, recipe, adapter, out, bare=False):
    """What every family's merge does at the end: an atomic write of the merged file (the toy has no merge)."""
    with atomic_file(Path(out)) as tmp:
        tmp.write_bytes(b"merged")
    return Path(out)


def main(mount: Path, profile_json: Path, report_json: Path) -> None:
    data = json.loads(profile_json.read_text())
    run = mount / "run"
    data["output"]["dir"] = str(run)
    profile = mount / "profile.json.yaml"
    profile.write_text(json.dumps(data))  # JSON is YAML
    filler = mount / "filler"
    filler.write_bytes(b"\0" * FILLER_BYTES)
    report: dict[str, Any] = {}

    report["full"] = _cli(["train", profile, "--quiet"])
    report["full_state"] = _state(run)
    filler.unlink()  # space freed: the newest complete checkpoint must be untouched and resumable
    report["after_free_digest"] = _state(run)["newest_digest"]
    report["resume"] = _cli(["train", profile, "--quiet", "--resume", "--set", "train.keep_last=2"])
    report["resume_state"] = _state(run)
    adapter = run / "adapter" / "adapter_model.safetensors"
    report["adapter"] = adapter.read_bytes().hex() if adapter.is_file() else None

    # A read-only view of the same filesystem (a bind mount: remounting the original needs no open files).
    ro = mount.parent / f"{mount.name}-ro"
    ro.mkdir(exist_ok=True)
    subprocess.run(["mount", "--bind", str(mount), str(ro)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
    report["ro_digest_before"] = _digest(ro)
    report["ro_new_run"] = _cli(["train", profile, "--quiet", "--out", ro / "new"])
    report["ro_new_nested"] = _cli(["train", profile, "--quiet", "--out", ro / "a" / "b"])
    report["ro_resume"] = _cli(["train", profile, "--quiet", "--resume", "--out", ro / "run"])
    ToyFamily.merge_adapter = _merge_like_a_family
    report["ro_merge"] = _cli(["merge", ro / "run", "--out", ro / "merged.safetensors"])
    report["ro_digest_after"] = _digest(ro)
    report_json.write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
