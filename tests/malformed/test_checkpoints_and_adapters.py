"""Malformed base checkpoints and adapters: one CheckpointError naming the file and the fix, via the CLI too."""

from __future__ import annotations

import argparse
import copy
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from engine.errors import CheckpointError
from engine.lora import inject_lora_to_ptv3, load_lora_checkpoint, save_lora_checkpoint
from engine.models.ptv3.checkpoint import load_pretrained, load_ptv3_state_dict
from tests.conftest import REPO
from tests.lora.conftest import randomise_lora, standin_small, tiny_ptv3
from tests.malformed.builders import folder_digest
from tests.malformed.harness import assert_one_message, run_cli


def _state() -> dict[str, torch.Tensor]:
    return {"backbone.embedding.stem.weight": torch.ones(4, 3), "backbone.enc.bias": torch.zeros(4)}


def _truncated_pth(p: Path) -> None:
    torch.save({"state_dict": _state()}, p)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _huge_header(p: Path) -> None:
    p.write_bytes(struct.pack("<Q", 2**60) + b'{"a": 1}')


def _short_header(p: Path) -> None:
    save_file({"w": torch.zeros(1000)}, str(p))
    p.write_bytes(p.read_bytes()[:200])


CHECKPOINT_CASES = [
    ("truncated-pth", "model.pth", _truncated_pth, ("corrupt or truncated", "Re-download or re-save")),
    ("empty-pth", "model.pth", lambda p: p.write_bytes(b""), ("empty", "0 bytes")),
    ("random-bytes-pth", "model.pth", lambda p: p.write_bytes(np.random.default_rng(0).bytes(999)),
     ("neither a torch zip archive nor a pickle stream",)),
    ("pth-needs-pickle", "model.pth", lambda p: torch.save({"state_dict": _state(), "args": argparse.Namespace(lr=1)}, p),
     ("unsafe pickle", "argparse.Namespace", "safetensors")),
    ("legacy-pickle-stream", "model.pth", lambda p: p.write_bytes(pickle.dumps({"x": argparse.Namespace()}, 2)),
     ("unsafe pickle",)),
    ("not-a-state-dict", "model.pth", lambda p: torch.save([torch.zeros(2)], p), ("no state dict of tensors",)),
    ("empty-state-dict", "model.pth", lambda p: torch.save({}, p), ("no state dict of tensors",)),
    ("random-bytes-safetensors", "model.safetensors", lambda p: p.write_bytes(np.random.default_rng(1).bytes(512)),
     ("not a readable safetensors file",)),
    ("huge-header-safetensors", "model.safetensors", _huge_header, ("not a readable safetensors file",)),
    ("truncated-safetensors", "model.safetensors", _short_header, ("not a readable safetensors file",)),
    ("missing-file", "model.pth", lambda p: None, ("not found",)),
]


@pytest.mark.parametrize(("case", "name", "make", "needles"), CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_malformed_base_checkpoint(tmp_path, case, name, make, needles):
    path = tmp_path / name
    make(path)
    with pytest.raises(CheckpointError) as info:
        load_ptv3_state_dict(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    for needle in needles:
        assert needle in message, message


def test_wrong_architecture_state_dict(tmp_path):
    path = tmp_path / "other.safetensors"
    other = standin_small()  # another network's weights
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError) as info:
        load_pretrained(tiny_ptv3(), path)
    message = str(info.value)
    assert message.startswith(str(path)) and "does not match the model" in message and "missing" in message


def _scenesplat_profile(tmp_path, pretrained: Path) -> Path:
    data = yaml.safe_load((REPO / "profiles" / "demo-scenesplat.yaml").read_text())
    data["model"].update({"demo_base": False, "pretrained": str(pretrained)})
    data["output"]["dir"] = str(tmp_path / "run")
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize(("case", "make", "needles"), [
    ("truncated-pth", _truncated_pth, ("corrupt or truncated",)),
    ("wrong-architecture", lambda p: torch.save({"state_dict": _state()}, p), ("missing",)),
])
def test_train_with_a_bad_base_checkpoint_exits_2(tmp_path, capsys, case, make, needles):
    ckpt = tmp_path / "base.pth"
    make(ckpt)
    code, err = run_cli(["train", str(_scenesplat_profile(tmp_path, ckpt)), "--quiet"], capsys)
    assert_one_message(code, err, (str(ckpt), *needles))
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---------------------------------------------------------------- adapters


@pytest.fixture
def adapter(tmp_path):
    base = standin_small().eval()
    model = inject_lora_to_ptv3(copy.deepcopy(base), r=4, lora_alpha=8, target_modules=["attn"])
    randomise_lora(model)
    return base, save_lora_checkpoint(model, tmp_path / "adapter")


def _drop_tensor(folder: Path) -> None:
    weights = load_file(str(folder / "adapter_model.safetensors"))
    weights.pop(sorted(weights)[0])
    save_file(weights, str(folder / "adapter_model.safetensors"))


def _wrong_shapes(folder: Path) -> None:
    weights = load_file(str(folder / "adapter_model.safetensors"))
    key = sorted(k for k in weights if "lora_A" in k)[0]
    weights[key] = torch.zeros(weights[key].shape[0] + 1, weights[key].shape[1])
    save_file(weights, str(folder / "adapter_model.safetensors"))


def _config_edit(folder: Path, text: str) -> None:
    (folder / "adapter_config.json").write_text(text)


ADAPTER_CASES = [
    ("missing-tensor", _drop_tensor, ("missing",)),
    ("wrong-shape", _wrong_shapes, ("lora_A",)),
    ("missing-config", lambda f: (f / "adapter_config.json").unlink(), ("adapter_config.json",)),
    ("corrupt-config-json", lambda f: _config_edit(f, '{"r": 4, "target_'), ("unreadable",)),
    ("config-not-lora", lambda f: _config_edit(f, json.dumps({"peft_type": "PREFIX_TUNING"})),
     ("not a LoRA adapter", "PREFIX_TUNING")),
    ("truncated-weights", lambda f: (f / "adapter_model.safetensors").write_bytes(b"\x10\x00"), ("safetensors",)),
    ("corrupt-metadata-json", lambda f: (f / "lora3d_metadata.json").write_text("{oops"), ("unreadable",)),
]


@pytest.mark.parametrize(("case", "breaker", "needles"), ADAPTER_CASES, ids=[c[0] for c in ADAPTER_CASES])
def test_malformed_adapter(adapter, case, breaker, needles):
    base, folder = adapter
    breaker(folder)
    before = folder_digest(folder)
    clean = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_lora_checkpoint(base, folder)
    message = str(info.value)
    assert str(folder) in message, message
    for needle in needles:
        assert needle in message, message
    assert folder_digest(folder) == before
    assert not any("lora_" in k for k in base.state_dict())  # the model is left as it was
    for key, value in base.state_dict().items():
        assert torch.equal(value, clean[key])


def test_merge_of_a_run_without_adapter_exits_2(tmp_path, capsys):
    code, err = run_cli(["merge", str(tmp_path), "--out", str(tmp_path / "merged.safetensors")], capsys)
    assert_one_message(code, err, (str(tmp_path), "not a lora3d run directory"))
    assert not (tmp_path / "merged.safetensors").exists()


def test_merge_of_an_unfinished_run_exits_2(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "profile.resolved.yaml").write_text((REPO / "profiles" / "demo-scenesplat.yaml").read_text())
    code, err = run_cli(["merge", str(run), "--out", str(tmp_path / "merged.safetensors")], capsys)
    assert_one_message(code, err, (str(run), "has no adapter/", "--resume"))
