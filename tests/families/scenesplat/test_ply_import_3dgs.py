"""Tests the INRIA 3DGS .ply import: value round trip, error paths and atomic scene folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plyfile
import pytest
from numpy.lib.recfunctions import repack_fields

from engine.errors import DataError
from engine.families.scenesplat.data import build_sample, load_scene
from engine.families.scenesplat.ply_import import REQUIRED_PROPERTIES, import_3dgs_folder, import_3dgs_ply

C0 = 0.28209479177387814


def _gaussians(
    n: int = 50, seed: int = 0, extra: tuple[str, ...] = ("nx", "ny", "nz", "f_rest_0", "f_rest_1")
):
    rng = np.random.default_rng(seed)
    names = list(REQUIRED_PROPERTIES) + list(extra)
    data = np.zeros(n, dtype=[(name, "f4") for name in names])
    for name in names:
        data[name] = rng.standard_normal(n)
    data["opacity"] = rng.uniform(-6, 6, n)
    for i in range(3):
        data[f"scale_{i}"] = rng.uniform(-7, 0, n)
    data["rot_0"][:10] = -np.abs(data["rot_0"][:10]) - 0.1  # negative w must be flipped
    return data


def _write_ply(path: Path, data: np.ndarray, text: bool = False) -> Path:
    plyfile.PlyData([plyfile.PlyElement.describe(data, "vertex")], text=text).write(str(path))
    return path


@pytest.mark.parametrize("text", [False, True])
def test_round_trip_recovers_color_opacity_scale_and_quaternion(tmp_path, text):
    data = _gaussians()
    ply = _write_ply(tmp_path / "room.ply", data, text=text)
    labels = np.arange(50) % 4
    summary = import_3dgs_ply(ply, tmp_path / "out" / "room", labels=labels)
    assert summary["num_points"] == 50 and summary["dropped_sh_coefficients"] == 2
    assert summary["files"] == sorted(
        ["coord.npy", "color.npy", "opacity.npy", "quat.npy", "scale.npy", "normal.npy", "segment.npy"]
    )
    scene = load_scene(tmp_path / "out" / "room")
    xyz = np.stack([data["x"], data["y"], data["z"]], 1)
    np.testing.assert_allclose(scene["coord"], xyz, atol=1e-6)
    f_dc = np.stack([data[f"f_dc_{i}"] for i in range(3)], 1).astype(np.float64)
    expected_color = np.floor(np.clip(0.5 + C0 * f_dc, 0, 1) * 255)
    assert scene["color"].dtype == np.uint8
    np.testing.assert_allclose(scene["color"], expected_color, atol=1)
    np.testing.assert_allclose(
        scene["opacity"], 1 / (1 + np.exp(-data["opacity"].astype(np.float64))), rtol=1e-5
    )
    log_scale = np.stack([data[f"scale_{i}"] for i in range(3)], 1).astype(np.float64)
    np.testing.assert_allclose(scene["scale"], np.exp(log_scale), rtol=1e-5)
    quat = np.stack([data[f"rot_{i}"] for i in range(4)], 1).astype(np.float64)
    quat /= np.linalg.norm(quat, axis=1, keepdims=True)
    quat[quat[:, 0] < 0] *= -1
    np.testing.assert_allclose(scene["quat"], quat, atol=1e-6)
    assert (scene["quat"][:, 0] >= 0).all()
    np.testing.assert_array_equal(scene["segment"], labels)
    sample = build_sample(scene)  # the imported scene is valid model input
    assert sample["opacity"].min() >= 0 and sample["opacity"].max() <= 1


def test_all_zero_normals_are_not_written(tmp_path):
    data = _gaussians()
    for axis in ("nx", "ny", "nz"):
        data[axis] = 0
    summary = import_3dgs_ply(_write_ply(tmp_path / "a.ply", data), tmp_path / "a")
    assert "normal.npy" not in summary["files"]


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])


def _huge_count(path: Path) -> None:
    path.write_bytes(path.read_bytes().replace(b"element vertex 50\n", b"element vertex 900000000000\n"))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_property", r"not an INRIA 3DGS .ply, missing properties \['rot_3'\]"),
        ("empty", "the `vertex` element is empty, got 0 Gaussians"),
        ("truncated", "cannot parse the PLY file"),
        ("huge_count", "header declares 900000000000 vertices"),
        ("nan", "Gaussians with NaN or inf properties, got 2 of 50 rows"),
        ("not_ply", "not a PLY file"),
        ("no_vertex", r"no `vertex` element, got elements \['face'\]"),
    ],
)
def test_bad_files_raise_data_errors_naming_the_file_and_leave_no_folder(tmp_path, case, message):
    path = tmp_path / "bad.ply"
    data = _gaussians()
    if case == "missing_property":
        _write_ply(path, repack_fields(data[[n for n in data.dtype.names if n != "rot_3"]]))
    elif case == "empty":
        _write_ply(path, data[:0])
    elif case == "truncated":
        _truncate(_write_ply(path, data))
    elif case == "huge_count":
        _huge_count(_write_ply(path, data))
    elif case == "nan":
        data["opacity"][[1, 4]] = np.nan
        _write_ply(path, data)
    elif case == "not_ply":
        path.write_bytes(b"\x00garbage")
    elif case == "no_vertex":
        faces = np.zeros(2, dtype=[("a", "i4")])
        plyfile.PlyData([plyfile.PlyElement.describe(faces, "face")]).write(str(path))
    with pytest.raises(DataError, match=message) as info:
        import_3dgs_ply(path, tmp_path / "out" / "bad")
    assert str(info.value).startswith(str(path))
    assert not (tmp_path / "out" / "bad").exists()
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_wrong_label_length_and_existing_destination_fail_without_touching_files(tmp_path):
    ply = _write_ply(tmp_path / "a.ply", _gaussians())
    with pytest.raises(DataError, match=r"labels: labels must be \(50,\) integers"):
        import_3dgs_ply(ply, tmp_path / "a", labels=np.zeros(49, np.int64))
    assert not (tmp_path / "a").exists()
    import_3dgs_ply(ply, tmp_path / "a")
    before = (tmp_path / "a" / "coord.npy").read_bytes()
    with pytest.raises(DataError, match="scene folder already exists"):
        import_3dgs_ply(_write_ply(tmp_path / "b.ply", _gaussians(seed=1)), tmp_path / "a")
    assert (tmp_path / "a" / "coord.npy").read_bytes() == before
    import_3dgs_ply(tmp_path / "b.ply", tmp_path / "a", overwrite=True)
    assert (tmp_path / "a" / "coord.npy").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "a.ply", "b.ply"]


def test_folder_import_makes_one_scene_per_ply_and_can_skip_bad_files(tmp_path):
    src = tmp_path / "plys"
    src.mkdir()
    _write_ply(src / "kitchen.ply", _gaussians(30, seed=1))
    _write_ply(src / "office.ply", _gaussians(40, seed=2))
    _truncate(_write_ply(src / "broken.ply", _gaussians(50, seed=3)))
    with pytest.raises(DataError, match="broken.ply"):
        import_3dgs_folder(src, tmp_path / "stop" / "train")
    summaries = import_3dgs_folder(src, tmp_path / "data" / "train", on_error="skip")
    assert [s["scene"] for s in summaries] == ["broken", "kitchen", "office"]
    assert "error" in summaries[0] and summaries[1]["num_points"] == 30
    assert sorted(p.name for p in (tmp_path / "data" / "train").iterdir()) == ["kitchen", "office"]
    with pytest.raises(DataError, match="no .ply files"):
        import_3dgs_folder(tmp_path / "data", tmp_path / "x")
