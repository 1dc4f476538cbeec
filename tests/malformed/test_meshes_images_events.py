"""Malformed meshes, images, id maps, prepared MIDI scenes and events files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from engine.errors import DataError
from engine.families.midi.prepare import prepare_dataset
from engine.families.midi.scene_data import load_prepared_scene
from engine.train.events import EventLog, EventTail, read_events
from tests.malformed.builders import folder_digest
from tests.malformed.harness import assert_one_message, run_cli, run_cli_full


def _boxes(folder: Path) -> Path:
    folder.mkdir(parents=True)
    trimesh.creation.box().export(folder / "a.obj")
    trimesh.creation.box().apply_translation([2.0, 0.0, 0.0]).export(folder / "b.obj")
    return folder


def _pair(folder: Path, ids: np.ndarray, size=(32, 32)) -> None:
    Image.fromarray(np.full((*size, 3), 128, np.uint8)).save(folder / "image.png")
    Image.fromarray(ids.astype(np.uint8)).save(folder / "seg.png")


def _truncated_png(folder: Path) -> None:
    _pair(folder, np.ones((32, 32)))
    data = (folder / "image.png").read_bytes()
    (folder / "image.png").write_bytes(data[: len(data) // 2])


def _ids_not_matching(folder: Path) -> None:
    ids = np.zeros((32, 32))
    ids[:10], ids[10:20], ids[20:] = 1, 2, 5  # id 5: there are only 2 instances
    _pair(folder, ids)


# (scene, how to break it, the file the report must name, words)
MESH_CASES = [
    ("garbage_obj", lambda f: (f / "junk.obj").write_bytes(b"\x00\xff\x13 not a mesh \x7f" * 20), "junk.obj",
     "no triangles"),
    ("empty_stl", lambda f: (f / "empty.stl").write_bytes(b""), "empty.stl", "no triangles"),
    ("truncated_png", _truncated_png, "image.png", "could not be read as an image"),
    ("seg_wrong_size", lambda f: _pair(f, np.ones((16, 16)), size=(32, 32)) or
     Image.fromarray(np.ones((16, 16), np.uint8)).save(f / "seg.png"), "seg.png", "16x16"),
    ("ids_not_matching", _ids_not_matching, "seg.png", "[5]"),
    ("colour_id_map", lambda f: _pair(f, np.ones((32, 32))) or
     Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3)).astype(np.uint8)).save(f / "seg.png"),
     "seg.png", "single-channel"),
]


@pytest.fixture(scope="module")
def prepared_via_cli(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    raw, out = root / "raw", root / "out"
    _boxes(raw / "good")
    for scene, breaker, _, _ in MESH_CASES:
        breaker(_boxes(raw / scene))
    # a scene prepared by an earlier run, not in this input: must come through untouched
    _boxes(root / "old_raw" / "old")
    assert prepare_dataset(root / "old_raw", out, num_samples=64, image_size=32, workers=1, progress=False).ok
    before = folder_digest(out / "old")
    return root, before


def test_prepare_mesh_cli_skips_and_reports_bad_scenes(prepared_via_cli, capsys):
    root, before = prepared_via_cli
    out = root / "out"
    code, err, _ = run_cli_full(["prepare-mesh", "--input_dir", str(root / "raw"), "--output_dir", str(out),
                                 "--num_samples", "64", "--image_size", "32", "--workers", "1"], capsys)
    assert "Traceback" not in err
    assert code == 1  # skip-and-report: the good scene is written, the bad ones are listed
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["prepared"] == ["good"]
    assert sorted(report["failed"]) == sorted(c[0] for c in MESH_CASES)
    for scene, _, file, words in MESH_CASES:
        [problem] = [p for p in report["problems"] if p["scene"] == scene and p["severity"] == "error"]
        assert problem["file"] == file and words in problem["message"], problem
        assert f"{scene}/{file}" in " ".join(err.split())
    assert folder_digest(out / "old") == before
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["good", "old"]  # nothing half-written


def test_prepare_mesh_cli_missing_input_exits_2(tmp_path, capsys):
    code, err = run_cli(["prepare-mesh", "--input_dir", str(tmp_path / "nope"), "--output_dir",
                         str(tmp_path / "out")], capsys)
    assert_one_message(code, err, (str(tmp_path / "nope"), "does not exist", "--input_dir"))


# ---------------------------------------------------------------- prepared scenes (the training reader)


@pytest.fixture(scope="module")
def good_prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    _boxes(root / "raw" / "s0")
    assert prepare_dataset(root / "raw", root / "out", num_samples=64, image_size=32, workers=1, progress=False).ok
    return root / "out" / "s0"


def _first_npz(folder: Path) -> Path:
    return sorted(folder.glob("*.npz"))[0]


PREPARED_CASES = [
    ("manifest-corrupt", lambda f: (f / "manifest.json").write_text("{"), "manifest.json", "not valid JSON"),
    ("manifest-missing", lambda f: (f / "manifest.json").unlink(), "manifest.json", "missing"),
    ("manifest-wrong-format", lambda f: (f / "manifest.json").write_text(json.dumps({"format": "x"})),
     "manifest.json", "`format`"),
    ("npz-truncated", lambda f: _first_npz(f).write_bytes(_first_npz(f).read_bytes()[:100]), "a.npz", ""),
    ("npz-pickled", lambda f: np.savez(_first_npz(f), surface_points=np.array([{}] * 64, dtype=object),
                                       surface_normals=np.zeros((64, 3), np.float32)), "a.npz", ""),
    ("npz-nan", lambda f: np.savez(_first_npz(f), surface_points=np.full((64, 3), np.nan, np.float32),
                                   surface_normals=np.zeros((64, 3), np.float32)), "a.npz", ""),
    ("seg-truncated", lambda f: (f / "seg.png").write_bytes((f / "seg.png").read_bytes()[:30]), "seg.png", ""),
    ("image-missing", lambda f: (f / "image.png").unlink(), "image.png", ""),
]


@pytest.mark.parametrize(("case", "breaker", "file", "words"), PREPARED_CASES, ids=[c[0] for c in PREPARED_CASES])
def test_malformed_prepared_scene(tmp_path, good_prepared, case, breaker, file, words):
    folder = tmp_path / "s0"
    shutil.copytree(good_prepared, folder)
    breaker(folder)
    with pytest.raises(DataError) as info:
        load_prepared_scene(folder)
    message = str(info.value)
    assert f"s0/{file}" in message and words in message, message
    assert "prepare_data.py" in message  # the fix


# ---------------------------------------------------------------- events.jsonl


def _event(type_: str, **fields) -> bytes:
    return json.dumps({"type": type_, **fields}).encode() + b"\n"


EVENT_CASES = [
    ("torn-last-line", _event("start") + _event("step", step=1) + b'{"type": "step", "st', ["start", "step"]),
    ("torn-middle-line", _event("start") + b'{"type": "ste\n' + _event("end"), ["start", "end"]),
    ("binary-garbage", b"\x00\xff\xfe\x80" * 100, []),
    ("empty", b"", []),
    ("blank-lines", b"\n\n  \n", []),
    ("json-but-not-events", b"[1, 2]\n42\n\"text\"\n{\"no_type\": 1}\n" + _event("end"), ["end"]),
    ("invalid-utf8-line", _event("start") + b"\xff\xfe{}\n" + _event("end"), ["start", "end"]),
    ("nan-as-string", _event("step", loss="nan"), ["step"]),
]


@pytest.mark.parametrize(("case", "content", "types"), EVENT_CASES, ids=[c[0] for c in EVENT_CASES])
def test_malformed_events_file(tmp_path, case, content, types):
    path = tmp_path / "events.jsonl"
    path.write_bytes(content)
    assert [e["type"] for e in read_events(path)] == types
    assert [e["type"] for e in EventTail(path).poll()] == types


def test_tail_holds_back_a_line_until_its_newline_arrives(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(_event("start") + _event("step", step=1)[:-1])  # the writer has not finished the line
    tail = EventTail(path)
    assert [e["type"] for e in tail.poll()] == ["start"]
    with open(path, "ab") as f:
        f.write(b"\n")
    assert [e["step"] for e in tail.poll()] == [1]


def test_a_torn_line_never_corrupts_the_next_run_s_events(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(_event("start") + b'{"type": "step", "step": 3, "lo')  # killed mid-write
    log = EventLog(path)
    log.emit("start", resumed_from="step-2")
    log.emit("end", status="completed")
    log.close()
    events = read_events(path)
    assert [e["type"] for e in events] == ["start", "start", "end"]
    assert events[1]["resumed_from"] == "step-2"


def test_watch_of_a_missing_run_exits_2(tmp_path, capsys):
    code, err = run_cli(["watch", str(tmp_path / "nope"), "--plain"], capsys)
    assert_one_message(code, err, (str(tmp_path / "nope"), "run directory not found"))


def test_watch_of_a_folder_without_events_exits_2(tmp_path, capsys):
    code, err = run_cli(["watch", str(tmp_path), "--plain"], capsys)
    assert_one_message(code, err, (str(tmp_path), "no events.jsonl"))
