"""Malformed SceneSplat scene folders and 3DGS .ply files: one DataError naming the file and the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from engine.errors import DataError
from engine.families.scenesplat.data import load_scene
from tests.malformed.builders import folder_digest, write_3dgs_ply, write_scene
from tests.malformed.harness import assert_one_message, run_cli, run_cli_full


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _set(folder: Path, name: str, array) -> None:
    np.save(folder / f"{name}.npy", array, allow_pickle=True)


# (case id, the file it breaks, how, expected message fragments)
SCENE_CASES = [
    ("truncated-npy", "coord", lambda f: _truncate(f / "coord.npy"), ("cannot read the .npy", "Re-export")),
    ("header-only-npy", "coord", lambda f: _truncate(f / "coord.npy", 0.2), ("cannot read the .npy",)),
    ("empty-file", "opacity", lambda f: (f / "opacity.npy").write_bytes(b""), ("cannot read the .npy",)),
    ("text-file", "scale", lambda f: (f / "scale.npy").write_text("1 2 3\n"), ("cannot read the .npy",)),
    ("int-coords", "coord", lambda f: _set(f, "coord", np.zeros((32, 3), np.int32)), ("`coord`", "float", "int32")),
    ("wrong-shape", "coord", lambda f: _set(f, "coord", np.zeros((32, 2), np.float32)), ("`coord`", "(N, 3)", "(32, 2)")),
    ("float-labels", "segment", lambda f: _set(f, "segment", np.zeros(32, np.float32)), ("`segment`", "integer")),
    ("nan-coord", "coord", lambda f: _set(f, "coord", np.full((32, 3), np.nan, np.float32)), ("NaN or inf", "32 bad rows")),
    ("inf-scale", "scale", lambda f: _set(f, "scale", np.full((32, 3), np.inf, np.float32)), ("NaN or inf",)),
    ("mismatched-lengths", "scale", lambda f: _set(f, "scale", np.ones((31, 3), np.float32)), ("length disagrees", "got 31")),
    ("pickled-object-npy", "color", lambda f: _set(f, "color", np.array([{"c": 1}] * 32, dtype=object)),
     ("pickled objects", "numpy.save")),
    ("missing-required", None, lambda f: (f / "quat.npy").unlink(), ("required files missing", "`quat.npy`")),
    ("zero-gaussians", "coord", lambda f: [_set(f, n, np.zeros((0, k), np.float32) if k else np.zeros(0, np.float32))
                                           for n, k in (("coord", 3), ("color", 3), ("opacity", 0), ("quat", 4),
                                                        ("scale", 3))], ("scene is empty", "0 Gaussians")),
]


@pytest.mark.parametrize(("case", "name", "breaker", "needles"), SCENE_CASES, ids=[c[0] for c in SCENE_CASES])
def test_malformed_scene_folder(tmp_path, case, name, breaker, needles):
    folder = write_scene(tmp_path / "scene0")
    breaker(folder)
    before = folder_digest(folder)
    with pytest.raises(DataError) as info:
        load_scene(folder)
    message = str(info.value)
    assert str(folder / f"{name}.npy") in message if name else str(folder) in message
    for needle in needles:
        assert needle in message, message
    assert "." in message.split(":", 1)[1]  # a sentence with the fix follows the problem
    assert folder_digest(folder) == before  # reading never writes


def test_scene_folder_missing(tmp_path):
    with pytest.raises(DataError, match="scene folder is missing"):
        load_scene(tmp_path / "nope")


def test_data_check_reports_the_broken_scene_and_exits_1(tmp_path, capsys):
    root = tmp_path / "data"
    write_scene(root / "train" / "good")
    bad = write_scene(root / "train" / "bad")
    _truncate(bad / "coord.npy")
    write_scene(root / "val" / "v0")
    profile = yaml.safe_load((Path(__file__).parents[2] / "profiles" / "demo-scenesplat.yaml").read_text())
    profile["model"]["demo_base"] = False
    profile["model"]["num_classes"] = 6
    profile["data"] = {"root": str(root)}
    profile["output"]["dir"] = str(tmp_path / "run")
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    code, err, out = run_cli_full(["data-check", str(path), "--json"], capsys)
    assert "Traceback" not in err, err
    assert code == 1
    assert "coord.npy" in out and "bad" in out


# ---------------------------------------------------------------- 3DGS .ply import


def _huge_count(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data.replace(b"element vertex 16", b"element vertex 900000000", 1))


PLY_CASES = [
    ("truncated-binary", lambda p: (write_3dgs_ply(p), _truncate(p, 0.6)), ("truncated",)),
    ("truncated-ascii", lambda p: (write_3dgs_ply(p, text=True), _truncate(p, 0.6)), ("PLY",)),
    ("huge-declared-count", lambda p: (write_3dgs_ply(p), _huge_count(p)), ("900000000 vertices", "truncated")),
    ("missing-properties", lambda p: write_3dgs_ply(p, drop=("opacity", "rot_3")), ("missing properties", "opacity")),
    ("nan-values", lambda p: write_3dgs_ply(p, values={"x": float("nan")}), ("NaN",)),
    ("inf-values", lambda p: write_3dgs_ply(p, values={"scale_0": float("inf")}), ("inf",)),
    ("zero-vertices", lambda p: write_3dgs_ply(p, n=0), ("0 Gaussians",)),
    ("empty-file", lambda p: p.write_bytes(b""), ("not a PLY file",)),
    ("random-bytes", lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), ("not a PLY file",)),
    ("mesh-not-splats", lambda p: p.write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\n"
                                               "property float y\nproperty float z\nend_header\n0 0 0\n1 0 0\n0 1 0\n"),
     ("not an INRIA 3DGS .ply",)),
]


@pytest.mark.parametrize(("case", "make", "needles"), PLY_CASES, ids=[c[0] for c in PLY_CASES])
def test_malformed_3dgs_ply_via_cli(tmp_path, capsys, case, make, needles):
    split = tmp_path / "train"
    write_scene(split / "existing")  # a scene imported earlier must survive a failed import
    before = folder_digest(split)
    ply = tmp_path / f"{case}.ply"
    make(ply)
    code, err = run_cli(["import-3dgs", str(ply), str(split / "new")], capsys)
    assert_one_message(code, err, (str(ply), *needles))
    assert folder_digest(split) == before
    assert sorted(p.name for p in split.iterdir()) == ["existing"]  # no half-written or hidden temp scene


LABEL_CASES = [
    ("labels-wrong-length", lambda p: np.save(p, np.zeros(3, np.int64)), ("labels must be (16,) integers",)),
    ("labels-float", lambda p: np.save(p, np.zeros(16, np.float32)), ("labels must be (16,) integers",)),
    ("labels-pickled", lambda p: np.save(p, np.array([{}] * 16, dtype=object), allow_pickle=True),
     ("pickled objects",)),
    ("labels-truncated", lambda p: (np.save(p, np.zeros(16, np.int64)), _truncate(p, 0.3)), ("cannot read the .npy",)),
    ("labels-missing", lambda p: None, ("file is missing",)),
]


@pytest.mark.parametrize(("case", "make", "needles"), LABEL_CASES, ids=[c[0] for c in LABEL_CASES])
def test_malformed_labels_via_cli(tmp_path, capsys, case, make, needles):
    ply = write_3dgs_ply(tmp_path / "scene.ply")
    labels = tmp_path / "labels.npy"
    make(labels)
    code, err = run_cli(["import-3dgs", str(ply), str(tmp_path / "dest"), "--labels", str(labels)], capsys)
    assert_one_message(code, err, (str(labels), *needles))
    assert not (tmp_path / "dest").exists()


def test_import_into_an_existing_scene_is_refused_and_leaves_it(tmp_path, capsys):
    dest = write_scene(tmp_path / "scene")
    before = folder_digest(dest)
    code, err = run_cli(["import-3dgs", str(write_3dgs_ply(tmp_path / "s.ply")), str(dest)], capsys)
    assert_one_message(code, err, (str(dest), "already exists"))
    assert folder_digest(dest) == before
