"""A full disk during a checkpoint or adapter write: clear message, exit 2, earlier checkpoints intact."""

from __future__ import annotations

import hashlib
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
