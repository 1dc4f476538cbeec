"""Bounded inputs: every size, depth and alias limit refuses before allocating, exit 2, key or file named, nothing written.

Each case is driven from the command line a user runs (in-process, as `python -m engine` would), and checks:
exit code 2, no traceback, one `error:` message naming the key or file (and the limit where there is one),
and that the run or destination folder was not written. The limits themselves come from the modules that
enforce them, so a changed limit changes the expectation, not the test.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from engine.errors import DataError
from engine.families.recipe import load_recipe
from engine.families.scenesplat.data import build_sample, load_scene
from engine.input_limits import MAX_IMAGE_PIXELS, read_npy_header
from engine.models.dit.mesh import MAX_OCTREE_RESOLUTION
from engine.profile.bounded_yaml import MAX_DEPTH, MAX_PROFILE_BYTES
from engine.profile.schema import MAX_SEED
from tests.conftest import REPO, toy_profile_dict
from tests.malformed.builders import folder_digest, write_3dgs_ply, write_scene
from tests.malformed.harness import assert_one_message, run_cli

# ---------------------------------------------------------------- profiles


def _toy_text(tmp_path: Path) -> str:
    return yaml.safe_dump(toy_profile_dict(tmp_path), sort_keys=False)


def _train_refused(tmp_path: Path, capsys, text: str | bytes, needles: tuple[str, ...], extra: list[str] = ()):
    path = tmp_path / "p.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, err = run_cli(["train", str(path), "--quiet", *extra], capsys)
    assert_one_message(code, err, needles)
    assert not (tmp_path / "run").exists()  # refused before the run directory was made
    return err


def _alias_bomb(levels: int, width: int = 9) -> str:
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "".join(f"    {line}\n" for line in lines)


def test_alias_bomb_is_refused_naming_the_key_not_the_value(tmp_path, capsys):
    text = _toy_text(tmp_path) + "hardware:\n  measured:\n" + _alias_bomb(9)  # 9^9 = 387M values written as 9 lines
    err = _train_refused(tmp_path, capsys, text, ("YAML aliases", "hardware.measured.a8", "*a7", "line"))
    assert len(err) < 1000  # the expanded value is never printed


def test_a_small_profile_cannot_balloon(tmp_path, capsys):
    # ~700 bytes that a plain safe_load expands to megabytes; the resolved profile would be written out whole.
    text = _toy_text(tmp_path) + "hardware:\n  measured:\n" + _alias_bomb(5, width=10)
    assert len(text) < 1200
    _train_refused(tmp_path, capsys, text, ("YAML aliases", "hardware.measured", "double"))


def test_modest_aliases_still_load(tmp_path, capsys):
    text = _toy_text(tmp_path) + "hardware:\n  measured:\n" + _alias_bomb(2, width=3)
    path = tmp_path / "p.yaml"
    path.write_text(text)
    code, err = run_cli(["validate", str(path)], capsys)
    assert code == 0, err


def test_deep_nesting_is_refused(tmp_path, capsys):
    text = _toy_text(tmp_path) + "hardware:\n  measured: {x: " + "[" * 20_000 + "]" * 20_000 + "}\n"
    _train_refused(tmp_path, capsys, text, (f"deeper than {MAX_DEPTH} levels", "hardware.measured.x"))


def test_deep_block_nesting_is_refused(tmp_path, capsys):
    block = "".join(f"{'  ' * (i + 2)}k{i}:\n" for i in range(MAX_DEPTH + 3)) + f"{'  ' * (MAX_DEPTH + 5)}v: 1\n"
    _train_refused(tmp_path, capsys, _toy_text(tmp_path) + "hardware:\n  measured:\n" + block,
                   (f"deeper than {MAX_DEPTH} levels", "hardware.measured.k0.k1"))


@pytest.mark.parametrize(("case", "tail", "needles"), [
    ("list-key", "? [a, b]\n: 1\n", ("at the top level", "is a list", "plain names")),
    ("mapping-key", "hardware:\n  measured:\n    ? {a: 1}\n    : 2\n", ("under `hardware.measured`", "is a mapping")),
    ("alias-of-list-as-key", "hardware:\n  measured:\n    l: &l [1, 2]\n    *l : 3\n", ("alias `*l`", "plain names")),
    ("recursive-alias", "hardware:\n  measured: &m\n    self: *m\n", ("alias `*m`", "recursive")),
    ("huge-integer", "hardware:\n  measured:\n    n: " + "9" * 5000 + "\n", ("hardware.measured.n", "5000 digits")),
])
def test_yaml_shapes_no_dict_can_hold_are_refused(tmp_path, capsys, case, tail, needles):
    _train_refused(tmp_path, capsys, _toy_text(tmp_path) + tail, needles)


def test_oversized_profile_is_refused_unread(tmp_path, capsys):
    text = _toy_text(tmp_path) + "# " + "x" * MAX_PROFILE_BYTES + "\n"
    _train_refused(tmp_path, capsys, text, (f"{MAX_PROFILE_BYTES:,}", "bytes"))


def test_a_pipe_as_profile_is_refused_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "p.yaml"
    os.mkfifo(fifo)
    code, err = run_cli(["validate", str(fifo)], capsys)
    assert_one_message(code, err, (str(fifo), "not a regular file"))


def test_yaml_merge_keys_are_supported_and_own_keys_win(tmp_path, capsys):
    data = toy_profile_dict(tmp_path)
    text = yaml.safe_dump(data, sort_keys=False).replace(
        "train:\n", "train:\n  <<: {lr: 0.5, batch_size: 4, seed: 3}\n", 1)
    path = tmp_path / "p.yaml"
    path.write_text(text)
    code, err = run_cli(["validate", str(path)], capsys)
    assert code == 0, err
    train = load_recipe(path).profile.train
    assert (train.seed, train.lr, train.batch_size) == (3, 0.05, 2)  # merged key in, own keys win


def test_a_key_twice_is_still_refused_next_to_a_merge(tmp_path, capsys):
    text = _toy_text(tmp_path).replace("train:\n", "train:\n  <<: {seed: 3}\n  lr: 0.1\n", 1)
    _train_refused(tmp_path, capsys, text, ("'lr' appears twice",))


def test_override_values_are_bounded_too(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(_toy_text(tmp_path))
    bomb = "{" + ", ".join(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}" if i else "x"] * 9) + "]" for i in range(9)) + "}"
    code, err = run_cli(["train", str(path), "--quiet", "--set", f"hardware.measured={bomb}"], capsys)
    assert_one_message(code, err, ("`--set hardware.measured=...`", "YAML aliases"))
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- numeric bounds on every key


def _numeric_fields():
    from engine.families.midi.options import MidiDataOptions, MidiLoraOptions, MidiModelOptions
    from engine.families.scenesplat.options import (
        SceneSplatDataOptions,
        SceneSplatLoraOptions,
        SceneSplatModelOptions,
    )
    from engine.profile import schema

    models = [schema.ModelSection, schema.LoraSection, schema.DataSection, schema.TrainSection, schema.OutputSection,
              schema.LaunchSection, schema.HardwareSection, schema.Profile, SceneSplatModelOptions,
              SceneSplatDataOptions, SceneSplatLoraOptions, MidiModelOptions, MidiDataOptions, MidiLoraOptions]
    for model in models:
        for name, info in model.model_fields.items():
            args = getattr(info.annotation, "__args__", (info.annotation,))
            if any(a in (int, float) for a in args) and info.annotation is not bool:
                yield model, name, info


def test_every_numeric_profile_key_has_both_bounds():
    missing = []
    for model, name, info in _numeric_fields():
        if name == "schema_version":
            continue  # checked for equality by the Profile itself
        if (model.__name__, name) == ("DataSection", "num_workers"):
            continue  # `auto` or 0..64: its own validator, for one message (test_profile_errors.py checks 65)
        kinds = {type(m).__name__ for m in info.metadata}
        if not ({"Ge", "Gt"} & kinds and {"Le", "Lt"} & kinds):
            missing.append(f"{model.__name__}.{name}")
    assert not missing, f"numeric profile keys without a lower and an upper bound: {missing}"


@pytest.mark.parametrize(("key", "value", "needles"), [
    ("train.seed", str(MAX_SEED + 1), ("`train.seed`", f"{MAX_SEED}")),
    ("train.seed", "1e20", ("`train.seed`",)),
    ("train.max_steps", "1e10", ("`train.max_steps`",)),
    ("train.keep_last", "100000", ("`train.keep_last`",)),
    ("lora.r", str(2**24), ("`lora.r`", "1024")),
    ("train.loss_spike_factor", ".inf", ("`train.loss_spike_factor`",)),
    ("train.max_grad_norm", ".nan", ("`train.max_grad_norm`",)),
])
def test_out_of_range_numbers_are_refused(tmp_path, capsys, key, value, needles):
    _train_refused(tmp_path, capsys, _toy_text(tmp_path), needles, ["--set", f"{key}={value}"])


def _scenesplat_profile(tmp_path: Path, **model) -> dict:
    data = yaml.safe_load((REPO / "profiles" / "demo-scenesplat.yaml").read_text())
    data["model"].update({"demo_base": False, **model})
    data["output"]["dir"] = str(tmp_path / "run")
    data["train"].update(max_steps=1, batch_size=1, grad_accum=1)
    return data


@pytest.mark.parametrize(("overrides", "needles"), [
    (["data.synthetic_points=2e9"], ("`data.synthetic_points`", "10000000")),
    (["data.grid_size=1e-9"], ("`data.grid_size`",)),
    (["model.ignore_index=1e12"], ("`model.ignore_index`",)),
])
def test_scenesplat_sizes_are_bounded(tmp_path, capsys, overrides, needles):
    text = yaml.safe_dump(_scenesplat_profile(tmp_path), sort_keys=False)
    _train_refused(tmp_path, capsys, text, needles, ["--set", *overrides])


def test_a_100000_channel_backbone_is_refused_before_building(tmp_path, capsys):
    from engine.families.scenesplat.options import BACKBONE_LIMITS, DEMO_TINY_CONFIG

    backbone = {k: list(v) if isinstance(v, tuple) else v for k, v in DEMO_TINY_CONFIG.items()}
    backbone["enc_channels"] = [16, 32, 100_000]
    text = yaml.safe_dump(_scenesplat_profile(tmp_path, backbone=backbone), sort_keys=False)
    _train_refused(tmp_path, capsys, text, ("`model.backbone.enc_channels`", str(BACKBONE_LIMITS["enc_channels"])))


# ---------------------------------------------------------------- data files


def _npy_header_only(path: Path, shape: tuple[int, ...], descr: str = "<f4") -> None:
    """A .npy whose header declares `shape` followed by 1,000 bytes of data."""
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (64 - (10 + len(header) + 1) % 64) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\0" * 1000)


def _scene_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_scene(root / "train" / "s0")
    write_scene(root / "val" / "v0")
    return root


def _train_on(tmp_path: Path, capsys, root: Path, needles: tuple[str, ...], **model) -> None:
    data = _scenesplat_profile(tmp_path, num_classes=6, **model)
    data["data"] = {"root": str(root)}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    code, err = run_cli(["train", str(path), "--quiet"], capsys)
    assert_one_message(code, err, needles)
    run = tmp_path / "run"
    assert not (run / "checkpoints").exists() and not (run / "adapter").exists()


def test_npy_header_declaring_1e11_elements_is_refused_before_allocation(tmp_path, capsys):
    root = _scene_root(tmp_path)
    coord = root / "train" / "s0" / "coord.npy"
    _npy_header_only(coord, (100_000_000_000, 3))
    _train_on(tmp_path, capsys, root, (str(coord), "(100000000000, 3)", "truncated"))


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_a_pipe_device_or_folder_as_npy_is_named_for_what_it_is(tmp_path, kind):
    folder = write_scene(tmp_path / "scene")
    path = folder / "scale.npy"
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        if not Path("/dev/zero").is_char_device():
            pytest.skip("no /dev/zero device here")
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    with pytest.raises(DataError) as info:
        load_scene(folder)
    message = str(info.value)
    assert str(path) in message and "missing" not in message
    assert {"fifo": "named pipe", "device": "a device", "folder": "is a folder"}[kind] in message


def test_labels_outside_num_classes_stop_training_with_the_file_named(tmp_path, capsys):
    root = _scene_root(tmp_path)
    labels = root / "train" / "s0" / "segment.npy"
    np.save(labels, np.full(32, 9, np.int64))
    _train_on(tmp_path, capsys, root, (str(labels), "outside [0, 6)", "[9]", "`model.num_classes`"))


def test_negative_labels_with_another_ignore_index_stop_training(tmp_path, capsys):
    root = _scene_root(tmp_path)
    labels = root / "val" / "v0" / "segment.npy"  # the validation split is checked too
    segment = np.zeros(32, np.int64)
    segment[:5] = -1
    np.save(labels, segment)
    _train_on(tmp_path, capsys, root, (str(labels), "5 points", "`model.ignore_index: -1`"), ignore_index=255)


def test_labels_equal_to_ignore_index_are_accepted_and_ignored(tmp_path):
    scene = load_scene(write_scene(tmp_path / "s"))
    scene["segment"] = np.array([0, 5, 255, 255] + [1] * 28, np.int64)
    sample = build_sample(scene, num_classes=6, ignore_index=255)
    assert sorted(set(sample["segment"].tolist())) == [0, 1, 5, 255]
    scene["segment"][1] = 100  # between num_classes and ignore_index: still refused
    with pytest.raises(DataError, match=r"labelled \[100\]"):
        build_sample(scene, num_classes=6, ignore_index=255)


def _faces_ply(path: Path, faces: int) -> None:
    path.write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
                    f"element face {faces}\nproperty list uchar int vertex_indices\nend_header\n"
                    "0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")


def _import_refused(tmp_path: Path, capsys, ply: Path, needles: tuple[str, ...]) -> None:
    dest = tmp_path / "split" / "scene"
    code, err = run_cli(["import-3dgs", str(ply), str(dest)], capsys)
    assert_one_message(code, err, (str(ply), *needles))
    assert not (tmp_path / "split").exists() or not any((tmp_path / "split").iterdir())


def test_ascii_ply_declaring_1e11_faces_is_refused(tmp_path, capsys):
    ply = tmp_path / "faces.ply"
    _faces_ply(ply, 100_000_000_000)
    _import_refused(tmp_path, capsys, ply, ("100000000000 faces", "truncated"))


@pytest.mark.parametrize("text", [True, False], ids=["ascii", "binary"])
def test_ply_header_count_smaller_than_its_data_is_refused(tmp_path, capsys, text):
    ply = write_3dgs_ply(tmp_path / "short.ply", n=16, text=text)
    ply.write_bytes(ply.read_bytes().replace(b"element vertex 16", b"element vertex 4", 1))
    _import_refused(tmp_path, capsys, ply, ("more data than its header declares",))


def test_midi_prepare_refuses_a_mesh_ply_declaring_1e11_faces(tmp_path):
    import trimesh

    from engine.families.midi.prepare import prepare_dataset

    raw = tmp_path / "raw"
    (raw / "bad").mkdir(parents=True)
    _faces_ply(raw / "bad" / "a.ply", 100_000_000_000)
    trimesh.creation.box().export(raw / "good.obj")
    report = prepare_dataset(raw, tmp_path / "out", num_samples=64, image_size=32, workers=1, progress=False)
    assert report.prepared == ["good"] and report.failed == ["bad"]
    problem = next(p for p in report.errors if p.scene == "bad")
    assert problem.file == "a.ply" and "100000000000 faces" in problem.message
    assert not (tmp_path / "out" / "bad").exists()


@pytest.mark.parametrize(("key", "value"), [("image_size", 10**6), ("num_samples", 2 * 10**9)])
def test_midi_prepare_sizes_are_bounded_before_work(tmp_path, key, value):
    from engine.families.midi.prepare import prepare_dataset

    (tmp_path / "raw" / "s").mkdir(parents=True)
    with pytest.raises(DataError, match=rf"`{key}`: must be an integer in"):
        prepare_dataset(tmp_path / "raw", tmp_path / "out", **{key: value}, progress=False)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- images


def _bomb_png(path: Path, width: int, height: int) -> Path:
    """A valid PNG header declaring width x height pixels, with almost no data (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _infer_argv(tmp_path: Path, rgb: Path, seg: Path, *extra: str) -> list[str]:
    return ["infer", "--pretrained", str(tmp_path / "no-pipeline-needed"), "--rgb_image", str(rgb),
            "--seg_image", str(seg), "--output", str(tmp_path / "out" / "scene.glb"), *extra]


@pytest.mark.parametrize(("width", "height"), [(100_000, 100_000), (10_000, 10_000)], ids=["pillow-refuses", "ours"])
def test_bomb_png_is_refused_before_decoding(tmp_path, capsys, width, height):
    bomb = _bomb_png(tmp_path / "bomb.png", width, height)
    Image.fromarray(np.ones((8, 8), np.uint8)).save(tmp_path / "seg.png")
    code, err = run_cli(_infer_argv(tmp_path, bomb, tmp_path / "seg.png"), capsys)
    assert_one_message(code, err, (str(bomb), f"{width * height:,} pixels", f"{MAX_IMAGE_PIXELS:,}"))
    assert not (tmp_path / "out").exists()


def test_bomb_png_in_a_prepared_scene_is_refused(tmp_path):
    from engine.families.midi.scene_data import _read_image

    _bomb_png(tmp_path / "image.png", 100_000, 100_000)
    with pytest.raises(DataError, match=r"image.png: is 10,000,000,000 pixels"):
        _read_image(tmp_path, "image.png", grayscale=False)


def test_npz_member_declaring_more_than_it_holds_is_refused(tmp_path):
    import zipfile

    from engine.families.midi.scene_data import _read_surface

    small = tmp_path / "small.npy"
    _npy_header_only(small, (10**9, 3))  # 12 GB declared, 1 KB stored
    with zipfile.ZipFile(tmp_path / "a.npz", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(small, "surface_points.npy")
        archive.write(small, "surface_normals.npy")
    with pytest.raises(DataError, match=r"a.npz: array `surface_\w+` declares \(1000000000, 3\)"):
        _read_surface(tmp_path, "a.npz", None)


@pytest.mark.parametrize(("value", "flag"), [(100_000, "--octree_resolution"), (0, "--octree_resolution"),
                                             (10**7, "--steps")])
def test_infer_sizes_are_bounded_before_any_work(tmp_path, capsys, value, flag):
    argv = _infer_argv(tmp_path, tmp_path / "rgb.png", tmp_path / "seg.png", flag, str(value))
    code, err = run_cli(argv, capsys)
    limit = MAX_OCTREE_RESOLUTION if flag == "--octree_resolution" else 10_000
    assert_one_message(code, err, (f"`{flag}`", f"1..{limit}", str(value)))


def test_octree_bound_holds_for_the_python_api_too():
    from engine.models.dit.mesh import sdf_grid

    with pytest.raises(ValueError, match="octree_resolution"):
        sdf_grid(lambda p: p[:, 0], octree_resolution=100_000)


def test_npy_reader_never_allocates_what_a_header_declares(tmp_path):
    path = tmp_path / "x.npy"
    _npy_header_only(path, (2**40,), "<f8")
    with pytest.raises(DataError, match="truncated"):
        read_npy_header(path)


# ---------------------------------------------------------------- adapter rank from a config


def test_adapter_config_rank_2_24_is_refused_before_injection(tmp_path):
    import copy
    import json

    from engine.errors import CheckpointError
    from engine.lora import inject_lora_to_ptv3, load_lora_checkpoint, save_lora_checkpoint
    from tests.lora.conftest import randomise_lora, standin_small

    base = standin_small().eval()
    model = inject_lora_to_ptv3(copy.deepcopy(base), r=4, lora_alpha=8, target_modules=["attn"])
    randomise_lora(model)
    folder = save_lora_checkpoint(model, tmp_path / "adapter")
    config = json.loads((folder / "adapter_config.json").read_text())
    config["r"] = 2**24
    (folder / "adapter_config.json").write_text(json.dumps(config))
    before = folder_digest(folder)
    with pytest.raises(CheckpointError) as info:
        load_lora_checkpoint(base, folder)
    message = str(info.value)
    assert str(folder / "adapter_config.json") in message and "16777216" in message and "rank 4" in message
    assert not any("lora_" in k for k in base.state_dict())  # nothing was injected
    assert folder_digest(folder) == before


# ---------------------------------------------------------------- destinations


def test_import_3dgs_onto_a_file_is_refused_and_the_file_kept(tmp_path, capsys):
    dest = tmp_path / "afile"
    dest.write_text("precious")
    code, err = run_cli(["import-3dgs", str(write_3dgs_ply(tmp_path / "s.ply")), str(dest)], capsys)
    assert_one_message(code, err, (str(dest), "is a file, not a scene folder"))
    assert dest.read_text() == "precious"


def test_import_3dgs_overwrite_flag_exists_and_replaces_atomically(tmp_path, capsys):
    dest = write_scene(tmp_path / "scene", n=8)
    code, err = run_cli(["import-3dgs", str(write_3dgs_ply(tmp_path / "s.ply", n=16)), str(dest)], capsys)
    assert_one_message(code, err, (str(dest), "already exists", "`--overwrite`"))
    code, err = run_cli(["import-3dgs", str(tmp_path / "s.ply"), str(dest), "--overwrite"], capsys)
    assert code == 0, err
    assert len(load_scene(dest)["coord"]) == 16
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_infer_output_naming_a_folder_is_refused_before_any_work(tmp_path, capsys):
    folder = tmp_path / "result.glb"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    argv = ["infer", "--pretrained", str(tmp_path / "none"), "--rgb_image", str(tmp_path / "none.png"),
            "--seg_image", str(tmp_path / "none.png"), "--output", str(folder)]
    code, err = run_cli(argv, capsys)
    assert_one_message(code, err, (str(folder), "`--output` names a folder"))
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]


def test_a_profile_of_too_many_values_is_refused(tmp_path, capsys):
    from engine.profile.bounded_yaml import MAX_VALUES

    text = _toy_text(tmp_path) + "hardware:\n  measured:\n    table: [" + ", ".join(["1"] * MAX_VALUES) + "]\n"
    _train_refused(tmp_path, capsys, text, (f"more than {MAX_VALUES:,} values", "hardware.measured.table"))
