"""Malformed `lora3d infer` inputs (images, id maps, model folder, adapter): exit 2, nothing written."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.models.dit.pipeline import build_tiny_pipeline
from tests.malformed.harness import assert_one_message, run_cli


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    build_tiny_pipeline(root / "pipe")
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(root / "rgb.png")
    ids = np.zeros((32, 32), np.uint8)
    ids[8:20, 8:20] = 1
    Image.fromarray(ids).save(root / "seg.png")
    data = (root / "rgb.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "seg16.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "seg_empty.png")
    (root / "adapter.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    return root


# (case, overrides of the argument values, the file the message names, words)
CASES = [
    ("truncated-rgb", {"rgb": "truncated.png"}, "truncated.png", "could not be read as an image"),
    ("rgb-is-text", {"rgb": "seg_empty.txt"}, "seg_empty.txt", ""),
    ("seg-wrong-size", {"seg": "seg16.png"}, "seg16.png", "got 16x16"),
    ("seg-no-instances", {"seg": "seg_empty.png"}, "seg_empty.png", "no instances"),
    ("missing-model-folder", {"pipe": "nope"}, "nope", "model folder not found"),
    ("adapter-wrong-suffix", {"lora": "rgb.png"}, "rgb.png", "unknown adapter format"),
    ("adapter-corrupt", {"lora": "adapter.safetensors"}, "adapter.safetensors", "safetensors"),
    ("adapter-missing", {"lora": "no_adapter"}, "no_adapter", "not found"),
]


@pytest.mark.parametrize(("case", "over", "file", "words"), CASES, ids=[getattr(c, "values", c)[0] for c in CASES])
def test_malformed_infer_input(inputs, tmp_path, capsys, case, over, file, words):
    (inputs / "seg_empty.txt").write_text("not an image")
    names = {"pipe": "pipe", "rgb": "rgb.png", "seg": "seg.png", **over}
    out = tmp_path / "scene.glb"
    argv = ["infer", "--pretrained", str(inputs / names["pipe"]), "--rgb_image", str(inputs / names["rgb"]),
            "--seg_image", str(inputs / names["seg"]), "--output", str(out), "--steps", "2",
            "--octree_resolution", "16"]
    if "lora" in names:
        argv += ["--lora_path", str(inputs / names["lora"])]
    code, err = run_cli(argv, capsys)
    assert_one_message(code, err, (str(inputs / file), words))
    assert not out.exists() and not list(tmp_path.iterdir())
