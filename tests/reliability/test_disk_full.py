"""Promise: a full disk or a read-only folder gives one clear message and exit 2, leaves nothing partial, keeps
the newest complete checkpoint intact, and `--resume` continues once it is fixed. Tested on a real small
filesystem (a tmpfs mounted in a user namespace) where this machine allows one, and by injection."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file

from engine.cli import main as cli_main
from engine.train import checkpoint as ckpt_mod
from engine.train.checkpoint import list_checkpoints
from engine.train.events import read_events
from tests.conftest import REPO, toy_profile_dict
from tests.toy_family import ToyFamily


def folder_digest(folder) -> str:
    """One hash over every file's relative path and bytes under `folder`."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _write(tmp_path, name="run", **sections):
    data = toy_profile_dict(tmp_path, **sections)
    data["output"]["dir"] = str(tmp_path / name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _cli(args, capsys):
    code = cli_main(args)
    captured = capsys.readouterr()
    return code, captured.err


def test_injected_enospc_in_checkpoint_exits_2_and_keeps_previous(tmp_path, monkeypatch, capsys):
    profile = _write(tmp_path)
    real = ckpt_mod._save_tensors
    seen = {}

    def full(tensors, path):
        if path.parent.name == ".tmp-step-4":
            seen["step-2"] = folder_digest(tmp_path / "run" / "checkpoints" / "step-2")
            raise OSError(28, "No space left on device")
        real(tensors, path)

    monkeypatch.setattr(ckpt_mod, "_save_tensors", full)
    code, err = _cli(["train", str(profile), "--quiet"], capsys)
    assert code == 2
    assert "Traceback" not in err
    assert "step-4" in err and "No space left on device" in err and "previous checkpoint is intact" in err
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["step-2"]
    assert folder_digest(root / "step-2") == seen["step-2"]  # untouched by the failed save
    assert sorted(p.name for p in root.iterdir()) == ["step-2"]  # no half-written folder left
    assert not (tmp_path / "run" / "adapter").exists()
    events = read_events(tmp_path / "run" / "events.jsonl")
    assert events[-2]["type"] == "error" and events[-2]["kind"] == "CheckpointError"
    assert events[-1] == {**events[-1], "type": "end", "status": "failed"}

    # Space freed: --resume continues from step-2 and ends where an uninterrupted run ends.
    monkeypatch.setattr(ckpt_mod, "_save_tensors", real)
    assert _cli(["train", str(profile), "--quiet", "--resume"], capsys)[0] == 0
    straight = _write(tmp_path, "straight")
    assert _cli(["train", str(straight), "--quiet"], capsys)[0] == 0
    a = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "straight" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert float((a[key] - b[key]).abs().max()) <= 1e-5
    starts = [e for e in read_events(tmp_path / "run" / "events.jsonl") if e["type"] == "start"]
    assert starts[-1]["resumed_from"] == "step-2"


def test_injected_enospc_in_adapter_keeps_checkpoints_and_old_adapter(tmp_path, monkeypatch, capsys):
    profile = _write(tmp_path)
    real = ToyFamily.save_adapter
    calls = {"n": 0}

    def full(self, model, folder, metadata):
        real(self, model, folder, metadata)
        calls["n"] += 1
        if folder.name == "adapter":  # the final adapter (staged), after adapter-best was written
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(ToyFamily, "save_adapter", full)
    code, err = _cli(["train", str(profile), "--quiet"], capsys)
    assert code == 2 and "Traceback" not in err
    assert "adapter" in err and "No space left on device" in err and "--resume" in err
    run = tmp_path / "run"
    assert not (run / "adapter").exists() and not list(run.glob(".adapter*"))  # no staging left behind
    assert (run / "adapter-best" / "adapter_model.safetensors").is_file()
    assert [p.name for p in list_checkpoints(run / "checkpoints")][-1] == "step-6"
    monkeypatch.setattr(ToyFamily, "save_adapter", real)
    code, _ = _cli(["train", str(profile), "--quiet", "--resume"], capsys)
    assert code == 0 and (run / "adapter" / "adapter_model.safetensors").is_file()


def _can_mount_tmpfs(tmp_path) -> str | None:
    if shutil.which("unshare") is None:
        return "no `unshare` on this machine"
    probe = tmp_path / "probe"
    probe.mkdir()
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"],
                          capture_output=True, text=True)
    return None if proc.returncode == 0 else f"cannot mount a small tmpfs in a user namespace: {proc.stderr.strip()}"


@pytest.mark.slow
def test_real_small_filesystem_fills_during_training(tmp_path):
    reason = _can_mount_tmpfs(tmp_path)
    if reason:
        pytest.skip(reason)
    run = tmp_path / "small"
    run.mkdir()
    # keep every checkpoint so the 160 KB filesystem fills up part-way through the run
    data = toy_profile_dict(tmp_path, train={"max_steps": 60, "checkpoint_every": 1, "keep_last": 1000})
    data["output"]["dir"] = str(run / "run")
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump(data, sort_keys=False))
    env = dict(os.environ, LORA3D_PLUGINS="tests.toy_family", PYTHONPATH=str(REPO))
    script = (f"mount -t tmpfs -o size=160k tmpfs {run} && "
              f"{sys.executable} -m engine train {profile} --quiet; code=$?; "
              f"cp -r {run}/run {tmp_path}/copy 2>/dev/null; exit $code")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "No space left on device" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 3, proc.stderr
    copy = tmp_path / "copy"
    ckpts = list_checkpoints(copy / "checkpoints")
    assert ckpts, "the filesystem filled before the first checkpoint"
    for folder in (copy / "checkpoints").iterdir():
        assert not folder.name.startswith(".tmp-"), folder
    newest = ckpts[-1]
    assert all(t.isfinite().all() for t in load_file(str(newest / "trainable.safetensors")).values())


class _FullDiskFile:
    """A text file whose writes fail as on a full disk (the kernel's ENOSPC)."""

    def __init__(self, real) -> None:
        self._real = real

    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_enospc_in_events_log_exits_2_without_traceback(tmp_path, monkeypatch, capsys):
    from engine.train import events as events_mod

    profile = _write(tmp_path)
    real_emit = events_mod.EventLog.emit
    count = {"n": 0}

    def emit(self, type, **fields):
        count["n"] += 1
        if count["n"] == 8 and self._file is not None:  # mid-run, after the first checkpoint
            self._file = _FullDiskFile(self._file)
        return real_emit(self, type, **fields)

    monkeypatch.setattr(events_mod.EventLog, "emit", emit)
    try:
        code, err = _cli(["train", str(profile), "--quiet"], capsys)
    except OSError as exc:  # what happens today: the error escapes main()
        pytest.fail(f"OSError escaped the CLI: {exc}")
    assert code == 2 and "Traceback" not in err
    assert "events.jsonl" in err and "No space left on device" in err
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step-2"]


# ---------------------------------------------------------------------- safetensors, messages, read-only
def _safetensor_full():
    from safetensors import SafetensorError

    return SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def test_safetensors_full_disk_in_checkpoint_is_exit_2(tmp_path, monkeypatch, capsys):
    """safetensors reports a full disk as SafetensorError, not OSError (issue 14 item 1)."""
    profile = _write(tmp_path)
    real = ckpt_mod.save_file

    def full(tensors, filename, *args, **kwargs):
        if ".tmp-step-4" in filename:
            raise _safetensor_full()
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(ckpt_mod, "save_file", full)
    code, err = _cli(["train", str(profile), "--quiet"], capsys)
    assert code == 2 and "Traceback" not in err and "No space left on device" in err
    assert "previous checkpoint is intact (step-2)" in err
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-2"]
    monkeypatch.setattr(ckpt_mod, "save_file", real)
    assert _cli(["train", str(profile), "--quiet", "--resume"], capsys)[0] == 0


def test_safetensors_full_disk_in_adapter_is_exit_2(tmp_path, monkeypatch, capsys):
    profile = _write(tmp_path, train={"checkpoint_every": None, "eval_every": None})
    real = ToyFamily.save_adapter

    def full(self, model, folder, metadata):
        (folder / "half").parent.mkdir(parents=True, exist_ok=True)
        (folder / "half").write_bytes(b"partial")
        raise _safetensor_full()

    monkeypatch.setattr(ToyFamily, "save_adapter", full)
    code, err = _cli(["train", str(profile), "--quiet"], capsys)
    assert code == 2 and "Traceback" not in err
    assert "adapter could not be written (No space left on device)" in err and "--resume" in err
    run = tmp_path / "run"
    assert not (run / "adapter").exists() and not list(run.glob(".adapter*"))
    monkeypatch.setattr(ToyFamily, "save_adapter", real)
    assert _cli(["train", str(profile), "--quiet", "--resume"], capsys)[0] == 0
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_full_disk_before_any_checkpoint_does_not_suggest_resume(tmp_path, monkeypatch, capsys):
    """A nearly full disk at start: the advice is to rerun, not `--resume` (there is nothing to resume)."""
    def full(data, path, header=None):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr("engine.train.run_dir.save_profile_data", full)
    code, err = _cli(["train", str(_write(tmp_path)), "--quiet"], capsys)
    assert code == 2 and "Traceback" not in err and "profile.resolved.yaml" in err
    assert "then rerun the same command" in err and "continue with --resume" not in err


def test_a_vanished_file_is_not_called_a_full_disk(tmp_path, monkeypatch, capsys):
    """What two trainers in one folder used to produce: ENOENT mid-save was reported as 'Free disk space'."""
    real = ckpt_mod._save_tensors

    def gone(tensors, path):
        if path.parent.name == ".tmp-step-4":
            raise FileNotFoundError(2, "No such file or directory", str(path))
        real(tensors, path)

    monkeypatch.setattr(ckpt_mod, "_save_tensors", gone)
    code, err = _cli(["train", str(_write(tmp_path)), "--quiet"], capsys)
    assert code == 2 and "vanished during the write" in err and "Free disk space" not in err


def test_read_only_run_directory_by_injection(tmp_path, monkeypatch, capsys):
    """Where no read-only mount is possible: EROFS from the first write of a new run and of a resume."""
    profile = _write(tmp_path)
    import engine.train.run_dir as run_dir_mod

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system", str(tmp_path / "run"))

    monkeypatch.setattr(run_dir_mod.RunLock, "acquire", read_only)
    for args in (["train", str(profile), "--quiet"], ["train", str(profile), "--quiet", "--resume"]):
        code, err = _cli(args, capsys)
        assert code == 2 and "Traceback" not in err and "read-only file system" in err and "--out NEW_DIR" in err


def _small_fs_report(tmp_path) -> dict:
    reason = _can_mount_tmpfs(tmp_path)
    if reason:
        pytest.skip(reason)
    mount = tmp_path / "small"
    mount.mkdir()
    data = toy_profile_dict(tmp_path, train={"max_steps": 40, "checkpoint_every": 1, "keep_last": 1000})
    profile_json = tmp_path / "profile.json"
    profile_json.write_text(json.dumps(data))
    report = tmp_path / "report.json"
    env = dict(os.environ, LORA3D_PLUGINS="tests.toy_family", PYTHONPATH=str(REPO))
    script = (f"mount -t tmpfs -o size=256k tmpfs {mount} && "
              f"{sys.executable} -m tests.reliability.small_fs_driver {mount} {profile_json} {report}")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(report.read_text())


def test_real_small_filesystem_full_then_freed_then_read_only(tmp_path, capsys):
    """A real 256 KB tmpfs: it fills part-way through a run (exit 2, the newest complete checkpoint intact and
    unchanged, nothing partial left); with space freed `--resume` ends with an uninterrupted run's adapter;
    remounted read-only, a new run, a resume and a merge each exit 2 with the reason and change nothing."""
    report = _small_fs_report(tmp_path)
    full = report["full"]
    assert full["code"] == 2 and full["err"].count("error:") == 1, full
    assert "No space left on device" in full["err"] and "Traceback" not in full["err"]
    state = report["full_state"]
    assert state["complete"] and state["newest_manifest_ok"], state
    assert state["folders"] == state["complete"]  # no .tmp-* and no half step folder
    assert state["hidden"] == []  # no adapter staging left
    assert report["after_free_digest"] == state["newest_digest"]
    assert report["resume"]["code"] == 0, report["resume"]
    assert report["resume_state"]["last_event"]["status"] == "completed"
    straight = _write(tmp_path, "straight", train={"max_steps": 40, "checkpoint_every": 1, "keep_last": 1000})
    assert _cli(["train", str(straight), "--quiet"], capsys)[0] == 0
    reference = (tmp_path / "straight" / "adapter" / "adapter_model.safetensors").read_bytes().hex()
    from safetensors.torch import load as load_bytes

    a, b = load_bytes(bytes.fromhex(report["adapter"])), load_bytes(bytes.fromhex(reference))
    assert a.keys() == b.keys() and all(float((a[k] - b[k]).abs().max()) <= 1e-6 for k in a)
    for key in ("ro_new_run", "ro_new_nested", "ro_resume", "ro_merge"):
        outcome = report[key]
        assert outcome["code"] == 2 and "read-only file system" in outcome["err"], (key, outcome)
        assert outcome["err"].count("error:") == 1 and "Traceback" not in outcome["err"], (key, outcome)
    assert "--out NEW_DIR" in report["ro_new_run"]["err"] and "merged.safetensors" in report["ro_merge"]["err"]
    assert report["ro_digest_after"] == report["ro_digest_before"]
