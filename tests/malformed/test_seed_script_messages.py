"""The seed scripts speak their own flags: a message never tells a `train_lora.py` user to pass `--set` or
`--out` (flags that script does not have), and `inference_with_lora.py` reads a seed-shaped `lora_weights.pth`."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import trimesh
import yaml
from PIL import Image

from tests.conftest import REPO, toy_profile_dict


def _script(name: str):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


@pytest.mark.parametrize(("lora3d_words", "script_words"), [
    ("Use `--set train.mixed_precision=bf16` or `train.mixed_precision=no`.",
     "Use `--mixed_precision bf16` or `--mixed_precision no`."),
    ("Pass --resume to continue it, or --out NEW_DIR (or `output.dir`) for a new run",
     "Pass --resume to continue it, or --output_dir NEW_DIR (or `output.dir`) for a new run"),
    ("rerun with --set train.batch_size=2 train.grad_accum=4 lora.r=8 train.gradient_checkpointing=true, or",
     "rerun with --batch_size 2 --gradient_accumulation_steps 4 --lora_rank 8 --gradient_checkpointing, or"),
    ("(`--set data.point_budget=96000` halves it)", "(`--options data.point_budget=96000` halves it)"),
    ("Check a setting with `lora3d plan PROFILE --set ...` first", "Check a setting with `lora3d plan PROFILE --set ...` first"),
])
def test_lora3d_words_become_the_scripts_flags(lora3d_words, script_words):
    assert _script("train_lora").translate_message(lora3d_words) == script_words


def _every_flag_named_exists(text: str) -> None:
    parser = _script("train_lora").build_parser()
    known = {o for action in parser._actions for o in action.option_strings}
    import re

    named = set(re.findall(r"(?<![\w`-])(--[a-z][\w-]*)", text.replace("lora3d plan PROFILE --set", "")))
    assert named <= known, f"flags the script does not have: {named - known} in {text!r}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is refused only on a CPU")
def test_fp16_on_cpu_names_the_scripts_mixed_precision_flag(tmp_path, capsys):
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(toy_profile_dict(tmp_path), sort_keys=False))
    code = _script("train_lora").main(["--config-file", str(path), "--mixed_precision", "fp16", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--mixed_precision no" in err and "--set" not in err
    _every_flag_named_exists(err)


def test_existing_run_names_the_scripts_output_flag(tmp_path, capsys):
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(toy_profile_dict(tmp_path, train={"max_steps": 2}), sort_keys=False))
    train_lora = _script("train_lora")
    assert train_lora.main(["--config-file", str(path), "--quiet"]) == 0
    capsys.readouterr()
    code = train_lora.main(["--config-file", str(path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--output_dir NEW_DIR" in err and "--out " not in err and "--resume" in err
    _every_flag_named_exists(err)


# ---------------------------------------------------------------- inference_with_lora.py and a seed-shaped file


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from engine.lora import inject_lora_to_dit, save_lora_checkpoint
    from engine.models.dit.pipeline import build_tiny_pipeline, load_pipeline

    root = tmp_path_factory.mktemp("seed")
    build_tiny_pipeline(root / "pipe")
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(root / "rgb.png")
    ids = np.zeros((32, 32), np.uint8)
    ids[8:20, 8:20] = 1
    Image.fromarray(ids).save(root / "seg.png")
    dit = inject_lora_to_dit(load_pipeline(root / "pipe").transformer, r=4, lora_alpha=4)
    generator = torch.Generator().manual_seed(0)
    for name, param in dit.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.2
    (root / "lora3d").mkdir()
    save_lora_checkpoint(dit, root / "lora3d" / "lora_weights.pth")
    # The seed's own shape: the injected model's LoRA state-dict entries and plain metadata, in a .pth.
    lora = {k: v.clone() for k, v in dit.state_dict().items() if "lora_" in k}
    (root / "seed").mkdir()
    torch.save({"state_dict": lora, "metadata": {"r": 4, "lora_alpha": 4,
                                                 "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}},
               root / "seed" / "lora_weights.pth")
    return root


def _infer(root, lora, out, capsys) -> trimesh.Trimesh:
    argv = ["--rgb_image", str(root / "rgb.png"), "--seg_image", str(root / "seg.png"), "--output", str(out),
            "--pretrained", str(root / "pipe"), "--steps", "2", "--octree_resolution", "16"]
    if lora is not None:
        argv += ["--lora_path", str(lora)]
    code = _script("inference_with_lora").main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"scene written to {out}" in captured.out
    return trimesh.load(out, force="mesh")


def test_inference_script_reads_a_seed_shaped_lora_weights_pth(tiny, tmp_path, capsys):
    seed = _infer(tiny, tiny / "seed" / "lora_weights.pth", tmp_path / "seed.glb", capsys)
    own = _infer(tiny, tiny / "lora3d" / "lora_weights.pth", tmp_path / "own.glb", capsys)
    base = _infer(tiny, None, tmp_path / "base.glb", capsys)
    np.testing.assert_array_equal(seed.vertices, own.vertices)  # the same adapter, whichever file shape
    assert seed.vertices.shape != base.vertices.shape or not np.array_equal(seed.vertices, base.vertices)
