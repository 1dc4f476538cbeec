"""Safe loading: no user-supplied file is ever unpickled, and nothing lora3d writes is a pickle."""

from __future__ import annotations

import contextlib
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
import yaml

from engine.cli import main as cli_main
from engine.errors import CheckpointError, DataError, ProfileError
from engine.families.midi.prepare import prepare_dataset
from engine.families.recipe import load_recipe, resolve_recipe
from engine.families.scenesplat.data import load_scene
from engine.lora.adapter_io import read_lora_checkpoint
from engine.models.ptv3.checkpoint import load_ptv3_state_dict
from engine.train.trainer import train
from tests.conftest import toy_profile_dict


class Planted:
    """Unpickling this creates the marker file: proof that a loader ran pickle on user data."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a loader unpickled a user-supplied file"


def _assert_clean_message(message: str, path: Path) -> None:
    assert str(path) in message or path.name in message
    assert "Traceback" not in message


def test_planted_pickle_is_live(tmp_path, marker):
    # the payload works: plain pickle.loads does create the marker (then the fixture's check is meaningful)
    pickle.loads(pickle.dumps(Planted(marker)))
    assert marker.exists()
    marker.unlink()


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_ptv3_checkpoint_pth_is_not_unpickled(tmp_path, marker, writer):
    path = tmp_path / "model_best.pth"
    payload = {"state_dict": {"w": torch.zeros(2)}, "extra": Planted(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError) as info:
        load_ptv3_state_dict(path)
    message = str(info.value)
    _assert_clean_message(message, path)
    assert "weights_only=False" in message and "safetensors" in message  # how to convert, where trusted


def test_adapter_pth_is_not_unpickled(tmp_path, marker):
    path = tmp_path / "adapter.pth"
    torch.save({"lora": {"a.lora_A.weight": torch.zeros(2, 2)}, "x": Planted(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        read_lora_checkpoint(path)
    _assert_clean_message(str(info.value), path)
    assert "safetensors" in str(info.value)


def _scene(folder: Path, n: int = 8) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.save(folder / "coord.npy", rng.normal(size=(n, 3)).astype(np.float32))
    np.save(folder / "color.npy", rng.integers(0, 255, (n, 3)).astype(np.uint8))
    np.save(folder / "opacity.npy", rng.uniform(size=n).astype(np.float32))
    np.save(folder / "quat.npy", np.tile([1, 0, 0, 0], (n, 1)).astype(np.float32))
    np.save(folder / "scale.npy", np.full((n, 3), 0.01, np.float32))
    return folder


@pytest.mark.parametrize("name", ["coord", "segment"])
def test_scene_object_npy_is_not_unpickled(tmp_path, marker, name):
    folder = _scene(tmp_path / "scene0")
    np.save(folder / f"{name}.npy", np.array([Planted(marker)] * 8, dtype=object), allow_pickle=True)
    with pytest.raises(DataError) as info:
        load_scene(folder)
    _assert_clean_message(str(info.value), folder / f"{name}.npy")
    assert "numpy.save" in str(info.value)


def test_triposg_surface_npy_needs_the_allow_flag(tmp_path, marker):
    raw, out = tmp_path / "raw", tmp_path / "out"
    (raw / "scene0").mkdir(parents=True)
    trimesh.creation.box().export(raw / "scene0" / "a.obj")
    np.save(raw / "scene0" / "b.npy", np.array({"surface_points": Planted(marker)}, dtype=object),
            allow_pickle=True)
    report = prepare_dataset(raw, out, num_samples=64, image_size=16, workers=1, progress=False)
    assert report.failed == ["scene0"]
    [problem] = [p for p in report.problems if p.file == "b.npy"]
    assert "--allow_pickle_npy" in str(problem) and "pickle" in str(problem)


def test_import_labels_npy_is_not_unpickled(tmp_path, marker, capsys):
    from tests.malformed.builders import write_3dgs_ply

    ply = write_3dgs_ply(tmp_path / "scene.ply", n=8)
    labels = tmp_path / "labels.npy"
    np.save(labels, np.array([Planted(marker)] * 8, dtype=object), allow_pickle=True)
    # whether the CLI exits cleanly is the catalogue's business (tests/malformed); here: nothing executed
    with contextlib.suppress(Exception):
        cli_main(["import-3dgs", str(ply), str(tmp_path / "dest"), "--labels", str(labels)])
    capsys.readouterr()


@pytest.mark.parametrize("tag", [
    "!!python/object/apply:builtins.open [{marker}, w]",
    "!!python/object/new:builtins.open [{marker}, w]",
    "!!python/name:os.system",
])
def test_yaml_python_tags_are_refused(tmp_path, marker, tag):
    data = toy_profile_dict(tmp_path)
    text = yaml.safe_dump(data, sort_keys=False).replace("name: toy", "name: " + tag.format(marker=marker))
    path = tmp_path / "evil.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError) as info:
        load_recipe(path)
    assert str(path) in str(info.value) and "invalid YAML" in str(info.value)


def _is_pickle(path: Path) -> bool:
    head = path.read_bytes()[:2]
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    if zipfile.is_zipfile(path):  # torch.save's archive holds a data.pkl
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(".pkl") for name in archive.namelist())
    return False


ALLOWED_SUFFIXES = {".safetensors", ".json", ".jsonl", ".yaml", ".yml", ".txt", ".md", ".png", ".glb", ".obj",
                    ".ply", ".npz", ".csv"}


def _scan_run(run: Path) -> list[Path]:
    files = [p for p in run.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert path.suffix in ALLOWED_SUFFIXES or path.name.startswith("events.out.tfevents"), path
        assert not _is_pickle(path), path
    return files


def test_toy_run_writes_no_pickles(tmp_path):
    data = toy_profile_dict(tmp_path, train={"max_steps": 3, "checkpoint_every": 1, "eval_every": 1})
    data["output"]["tensorboard"] = True
    train(resolve_recipe(data))
    files = _scan_run(tmp_path / "run")
    names = {p.name for p in files}
    assert {"trainable.safetensors", "optimizer.safetensors", "rng.safetensors", "checkpoint.json",
            "adapter_model.safetensors", "events.jsonl", "profile.resolved.yaml"} <= names


@pytest.mark.slow
def test_scenesplat_run_writes_no_pickles(tmp_path):
    import importlib.util
    import sys

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("crash_soak", REPO / "scripts" / "soak" / "crash_soak.py")
    soak = sys.modules.setdefault("crash_soak", importlib.util.module_from_spec(spec))
    spec.loader.exec_module(soak)  # registered first: its dataclasses look their module up
    data = soak.scenesplat_profile(tmp_path / "run", max_steps=2)
    data["output"]["tensorboard"] = True
    train(resolve_recipe(data))
    names = {p.name for p in _scan_run(tmp_path / "run")}
    assert "adapter_model.safetensors" in names
