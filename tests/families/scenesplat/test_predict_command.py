"""Tests `lora3d predict`: per-Gaussian outputs, the recoloured 3DGS .ply, queries, and bad input (exit 2, nothing written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import plyfile
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from engine.cli import main
from engine.families.scenesplat.adapters import HEAD_FILE
from engine.families.scenesplat.data import load_scene
from engine.families.scenesplat.ply_export import is_color_property
from engine.families.scenesplat.ply_import import REQUIRED_PROPERTIES, SH_C0, import_3dgs_ply
from engine.families.scenesplat.synthetic import SYNTHETIC_CLASSES, generate_room, write_text_embeddings
from engine.families.scenesplat.transforms import voxel_keys
from engine.render import class_colors


def _room_ply(path: Path, n: int = 900, seed: int = 0) -> tuple[Path, np.ndarray]:
    """A synthetic room as an INRIA 3DGS .ply with higher SH bands and one property no tool knows."""
    room = generate_room(np.random.default_rng(seed), "B", n)
    m = len(room["coord"])
    names = list(REQUIRED_PROPERTIES) + ["nx", "ny", "nz", "f_rest_0", "f_rest_1", "f_rest_2", "custom_tag"]
    data = np.zeros(m, dtype=[(p, "<f4") for p in names])
    rng = np.random.default_rng(seed + 1)
    for p in names:
        data[p] = rng.standard_normal(m)
    for i, axis in enumerate("xyz"):
        data[axis] = room["coord"][:, i]
        data[f"scale_{i}"] = np.log(room["scale"][:, i])
    for i in range(3):
        data[f"f_dc_{i}"] = (room["color"][:, i] / 255.0 - 0.5) / SH_C0
    plyfile.PlyData([plyfile.PlyElement.describe(data, "vertex")]).write(str(path))
    return path, data


def test_predict_on_a_3dgs_ply_keeps_every_property_but_colour(semseg_run, tmp_path, capsys):
    ply, data = _room_ply(tmp_path / "room.ply")
    assert main(["predict", str(semseg_run), "--scene", str(ply), "--out", str(tmp_path / "out")]) == 0
    folder = tmp_path / "out" / "room" / "adapter"
    labels = np.load(folder / "labels.npy")
    confidence = np.load(folder / "confidence.npy")
    assert labels.shape == (len(data),) and labels.dtype == np.int64 and labels.min() >= 0 and labels.max() < 6
    assert confidence.shape == (len(data),) and (confidence > 1 / 6 - 1e-6).all() and (confidence <= 1).all()
    out = plyfile.PlyData.read(str(folder / "labels.ply"))["vertex"].data
    assert out.dtype == data.dtype and len(out) == len(data)
    for name in data.dtype.names:
        if not is_color_property(name):
            assert out[name].tobytes() == data[name].tobytes(), name
    rgb = np.clip(0.5 + SH_C0 * np.stack([out[f"f_dc_{i}"] for i in range(3)], 1).astype(np.float64), 0, 1) * 255
    np.testing.assert_allclose(rgb, class_colors(6)[labels].astype(np.float64), atol=1e-3)
    assert all((out[f"f_rest_{i}"] == 0).all() for i in range(3))
    record = json.loads((folder / "prediction.json").read_text())
    assert sum(c["count"] for c in record["classes"]) == len(data) and record["model"] == "adapter"
    assert Image.open(folder / "labels.png").size[0] > 2 * 512


def test_predict_on_a_folder_of_scenes_writes_a_3dgs_ply_per_scene_and_model(semseg_run, tmp_path):
    scenes = tmp_path / "scenes"
    from engine.families.scenesplat.ply_import import write_scene_atomic

    for i in range(2):
        write_scene_atomic(generate_room(np.random.default_rng(i), "B", 600), scenes / f"scene_{i}")
    rc = main(["predict", str(semseg_run), "--scene", str(scenes), "--out", str(tmp_path / "out"), "--base",
               "--no-render"])
    assert rc == 0
    for i in range(2):
        for model in ("base", "adapter"):
            folder = tmp_path / "out" / f"scene_{i}" / model
            assert sorted(p.name for p in folder.iterdir()) == ["confidence.npy", "labels.npy", "labels.ply",
                                                                 "prediction.json"]
        # the written .ply reads back as a 3DGS scene with the same Gaussians, coloured by class
        summary = import_3dgs_ply(folder / "labels.ply", tmp_path / "back" / f"scene_{i}")
        back, scene = load_scene(summary["path"]), load_scene(scenes / f"scene_{i}")
        np.testing.assert_array_equal(back["coord"], scene["coord"])
        np.testing.assert_allclose(back["opacity"], scene["opacity"], atol=2e-6)
        np.testing.assert_allclose(back["color"], class_colors(6)[np.load(folder / "labels.npy")], atol=1)


class PlantedModel(nn.Module):
    """A stand-in language model: a Gaussian with the planted colour gets `planted`, any other a vector orthogonal to it."""

    def __init__(self, planted: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("planted", planted)
        self.embed_dim = planted.numel()

    def forward(self, data: dict) -> torch.Tensor:
        feat = data["feat"]
        is_planted = (feat[:, :3] - torch.tensor([1.0, -1.0, 1.0])).abs().sum(1) < 0.05  # magenta in [-1, 1]
        other = torch.cat([feat, torch.zeros(len(feat), self.embed_dim - feat.shape[1])], 1)
        other = other - (other @ self.planted)[:, None] * self.planted  # orthogonal to the planted vector
        return F.normalize(torch.where(is_planted[:, None], self.planted.expand_as(other), other + 1e-3), dim=1)


def test_a_query_lights_up_the_planted_gaussians(lang_run, tmp_path, monkeypatch):
    from engine.families.scenesplat.family import SceneSplatFamily

    embeddings, _ = write_text_embeddings(tmp_path / "text.npy", (*SYNTHETIC_CLASSES, "chair"), 32)
    chair = torch.from_numpy(np.load(embeddings)[-1])
    room = generate_room(np.random.default_rng(3), "A", 1500)
    # Plant whole voxels (at the run's 0.1 m grid, after the scene centring) so every Gaussian of a planted
    # voxel is represented by a planted one.
    coord = room["coord"] - np.array([*(room["coord"][:, :2].min(0) + room["coord"][:, :2].max(0)) / 2,
                                      room["coord"][:, 2].min()], dtype=np.float32)
    _, key = voxel_keys(coord, 0.1)
    planted = np.isin(key, np.unique(key)[::9])
    room["color"][planted] = (255, 0, 255)
    scene = tmp_path / "planted"
    from engine.families.scenesplat.ply_import import write_scene_atomic

    write_scene_atomic(room, scene)
    monkeypatch.setattr(SceneSplatFamily, "build_model", lambda self, recipe: PlantedModel(chair))
    rc = main(["predict", str(lang_run / "profile.resolved.yaml"), "--scene", str(scene), "--out",
               str(tmp_path / "out"), "--query", "chair", "--embeddings", str(embeddings)])
    assert rc == 0
    folder = tmp_path / "out" / "planted" / "base"
    similarity = np.load(folder / "query-chair.npy")
    assert similarity.shape == (len(planted),)
    assert similarity[planted].min() > 0.99 and np.abs(similarity[~planted]).max() < 0.05
    top = np.argsort(-similarity)[: planted.sum()]
    assert planted[top].all()
    assert (folder / "query-chair.ply").is_file() and (folder / "query-chair.png").is_file()
    record = json.loads((folder / "prediction.json").read_text())
    assert record["queries"][0]["text"] == "chair" and record["classes"][-1]["name"] == "chair"


def _not_3dgs(tmp_path: Path) -> Path:
    data = np.zeros(5, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1")])
    path = tmp_path / "mesh.ply"
    plyfile.PlyData([plyfile.PlyElement.describe(data, "vertex")]).write(str(path))
    return path


def _missing_quat(tmp_path: Path) -> Path:
    from engine.families.scenesplat.ply_import import write_scene_atomic

    scene = tmp_path / "broken"
    write_scene_atomic(generate_room(np.random.default_rng(0), "A", 200), scene)
    (scene / "quat.npy").unlink()
    return scene


@pytest.mark.parametrize("case", ["not-3dgs", "missing-arrays", "other-class-count", "embedding-width", "query-semseg"])
def test_bad_input_exits_2_names_the_file_and_writes_nothing(case, semseg_run, lang_run, tmp_path, capsys):
    out = tmp_path / "out"
    good, _ = _room_ply(tmp_path / "good.ply", n=300)
    run, extra, named = semseg_run, [], None
    if case == "not-3dgs":
        scene = named = _not_3dgs(tmp_path)
    elif case == "missing-arrays":
        scene = named = _missing_quat(tmp_path)
    elif case == "other-class-count":
        scene = good
        other = tmp_path / "other"
        shutil.copytree(semseg_run / "adapter", other)
        save_file({"seg_head.weight": torch.zeros(9, 32), "seg_head.bias": torch.zeros(9)}, str(other / HEAD_FILE))
        extra, named = ["--adapter", str(other)], other / HEAD_FILE
    elif case == "embedding-width":
        scene, run = good, lang_run
        named, _ = write_text_embeddings(tmp_path / "wide.npy", ("chair", "table"), 24)
        extra = ["--query", "chair", "--embeddings", str(named)]
    else:
        scene, extra, named = good, ["--query", "chair"], semseg_run / "profile.resolved.yaml"
    rc = main(["predict", str(run), "--scene", str(scene), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert str(named) in err.replace("\n", ""), err
    assert "Traceback" not in err
    assert not out.exists()


def test_predict_on_the_runs_own_validation_rooms(semseg_run, tmp_path):
    assert main(["predict", str(semseg_run), "--split", "val", "--out", str(tmp_path / "out"), "--no-render"]) == 0
    folder = tmp_path / "out" / "synthetic_val_0000" / "adapter"
    labels = np.load(folder / "labels.npy")
    ply = plyfile.PlyData.read(str(folder / "labels.ply"))["vertex"].data
    assert len(ply) == len(labels) > 0 and "split `val`" in json.loads((folder / "prediction.json").read_text())["input"]
