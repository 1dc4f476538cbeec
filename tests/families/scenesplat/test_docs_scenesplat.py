"""Runs every command and Python snippet of docs/scenesplat.md against tiny data prepared here.

Each fenced ```bash / ```python block of the guide is preceded by `<!-- test: NAME -->`. The blocks run
in document order in one temporary folder holding what they name: `checkpoints/pretrained.pth`,
`data/my_scenes`, `data/my_lang_scenes`, `scans/room.ply` and copies of `profiles/` in which the SceneSplat backbone is
replaced by TINY4 (the same 4-stage layout, tiny widths) and runs are 2 steps. `SCENESPLAT_CONFIG` is
swapped for TINY4 while the Python snippets run. `lora3d demo` is checked to reach `run_demo` (the
demo itself runs in test_demo_scenesplat.py). The fast tests check that every block is mapped, every
command line parses and every referenced profile validates; the full run is marked slow. A ```py block
needs what the test machine lacks (a text encoder's weights): it is compiled only.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[3]
DOC = REPO / "docs" / "scenesplat.md"
BLOCK_RE = re.compile(r"<!-- test: (?P<name>[\w-]+) -->\n```(?P<lang>bash|python)\n(?P<code>.*?)```", re.S)

TINY4 = dict(
    in_channels=11, order=["z", "z-trans"], stride=[2, 2, 2], enc_depths=[1, 1, 1, 1], enc_channels=[16, 16, 32, 32],
    enc_num_head=[1, 1, 2, 2], enc_patch_size=[64, 64, 64, 64], dec_depths=[1, 1, 1], dec_channels=[32, 32, 32],
    dec_num_head=[2, 2, 2], dec_patch_size=[64, 64, 64], enable_flash=False, drop_path=0.0, pooling="mean",
)


def _blocks() -> list[tuple[str, str, str]]:
    return [(m["name"], m["lang"], m["code"]) for m in BLOCK_RE.finditer(DOC.read_text())]


def _commands(code: str) -> list[list[str]]:
    lines = [line for line in code.replace("\\\n", " ").splitlines() if line.strip() and not line.startswith("#")]
    return [shlex.split(line) for line in lines]


def _script():
    spec = importlib.util.spec_from_file_location("train_lora_script", REPO / "scripts" / "train_lora.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_profile(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    model = data["model"]
    if model.get("backbone", "scenesplat") == "scenesplat":
        model["backbone"] = copy.deepcopy(TINY4)
    model["demo_base"] = False
    data.setdefault("data", {}).update(grid_size=0.1, point_budget=None, num_workers=0, synthetic_train=2,
                                       synthetic_val=1, synthetic_points=600)
    data.setdefault("train", {}).update(max_steps=2, epochs=1, batch_size=1, grad_accum=1, mixed_precision="no",
                                        eval_every=None, checkpoint_every=None, warmup_steps=0, device="cpu")
    data.setdefault("output", {})["tensorboard"] = False
    return data


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from engine.families.scenesplat.synthetic import write_synthetic_dataset
    from engine.models.ptv3 import PTv3LanguageModel

    root = tmp_path_factory.mktemp("docs")
    torch.manual_seed(0)
    base = PTv3LanguageModel(dict(TINY4))
    (root / "checkpoints").mkdir()
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in base.state_dict().items()}},
               root / "checkpoints" / "pretrained.pth")
    write_synthetic_dataset(root / "data" / "my_scenes", num_train=2, num_val=1, num_points=600)
    for scene in (root / "data" / "my_scenes").glob("*/*/segment.npy"):
        shutil.copy(scene, scene.with_name("segment20.npy"))  # the ScanNet20 profiles read segment20
    write_synthetic_dataset(root / "data" / "my_lang_scenes", num_train=2, num_val=1, num_points=600,
                            lang_dim=TINY4["dec_channels"][0])
    from engine.families.scenesplat.data import load_scene
    from engine.families.scenesplat.ply_export import write_3dgs_ply

    room = load_scene(root / "data" / "my_scenes" / "val" / "scene_0000")
    write_3dgs_ply(root / "scans" / "room.ply", room, room["color"])  # an INRIA 3DGS capture
    for path in [REPO / "profiles" / "demo-scenesplat.yaml", *(REPO / "profiles" / "scenesplat").glob("*.yaml")]:
        dest = root / path.relative_to(REPO)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(yaml.safe_dump(_tiny_profile(path), sort_keys=False))
    return root


def test_every_code_block_is_mapped_to_a_runner():
    text = DOC.read_text()
    fenced = re.findall(r"^```(bash|python)$", text, re.M)
    blocks = _blocks()
    assert len(blocks) == len(fenced) >= 10
    assert len({name for name, _, _ in blocks}) == len(blocks)
    for _name, lang, code in blocks:
        if lang == "bash":
            assert all(argv[0] in ("lora3d", "python") for argv in _commands(code))
        else:
            compile(code, str(DOC), "exec")


def test_snippets_that_need_model_weights_compile():
    snippets = re.findall(r"^```py\n(.*?)^```", DOC.read_text(), re.M | re.S)
    assert snippets and all(compile(code, str(DOC), "exec") for code in snippets)


def test_every_command_line_parses_and_its_profile_validates():
    from engine.cli import build_parser
    from engine.families.recipe import load_recipe

    script = _script()
    for name, lang, code in _blocks():
        if lang != "bash":
            continue
        for argv in _commands(code):
            if argv[0] == "lora3d":
                args = build_parser().parse_args(argv[1:])
                profile = getattr(args, "profile", None)
                sets = getattr(args, "set", [])
            else:
                assert argv[1] == "scripts/train_lora.py", name
                cli = script.build_cli_args(script.build_parser().parse_args(argv[2:]))
                profile, sets = cli[1], cli[3:] if "--set" in cli else []
            if profile is None:
                continue
            # drop the paths only the workspace has; everything else must validate on a bare clone
            keep = [s for s in sets if s.split("=")[0] not in ("data.root", "model.pretrained",
                                                              "lora_training.pretrained_path")]
            assert load_recipe(REPO / profile, keep).profile is not None, (name, argv)


@pytest.mark.slow
@pytest.mark.parametrize("name", [b[0] for b in _blocks()])
def test_doc_block_runs(name, workspace, monkeypatch, capsys):
    from engine.cli import main as cli_main
    from engine.families.scenesplat import demo

    monkeypatch.chdir(workspace)
    monkeypatch.setenv("LORA3D_CACHE", str(workspace / "cache"))
    monkeypatch.delenv("LORA3D_PLUGINS", raising=False)
    monkeypatch.setattr("engine.models.ptv3.SCENESPLAT_CONFIG", dict(TINY4))
    demo_calls = []
    monkeypatch.setattr(demo, "run_demo", lambda out, console=None, **kw: demo_calls.append(out) or {})
    _, lang, code = next(b for b in _blocks() if b[0] == name)
    if lang == "python":
        exec(compile(code, f"{DOC}:{name}", "exec"), {"__name__": f"doc_{name}"})
        return
    script = _script()
    for argv in _commands(code):
        rc = cli_main(argv[1:]) if argv[0] == "lora3d" else script.main(argv[2:])
        err = capsys.readouterr().err
        assert rc == 0, (name, argv, err[-2000:])
    if name == "demo":
        assert demo_calls == [Path("runs/demo")]
    if name == "merge":
        assert (workspace / "merged" / "model.pth").is_file() and (workspace / "merged" / "model.safetensors").is_file()


@pytest.mark.slow
def test_preset_table_counts_match_the_real_backbones():
    from engine.families.scenesplat.options import BACKBONES
    from engine.lora import inject_lora_with_preset, lora_summary
    from engine.models.ptv3 import PTv3LanguageModel, PTv3Segmentor

    rows = re.findall(r"^\| `(\w+)` \|.*\| ([\d,]+) \| ([\d.]+) \| ([\d,]+) \|", DOC.read_text(), re.M)
    assert [r[0] for r in rows] == ["minimal", "standard", "full", "decoder_only"]
    for preset, ss_params, ss_percent, pc_params in rows:
        ss = inject_lora_with_preset(PTv3LanguageModel(dict(BACKBONES["scenesplat"])), preset)
        pc = inject_lora_with_preset(PTv3Segmentor(dict(BACKBONES["pointcept"]), 20), preset)
        s, p = lora_summary(ss), lora_summary(pc)
        assert s["lora_params"] == int(ss_params.replace(",", "")), preset
        assert s["lora_params"] / (s["total_params"] - s["lora_params"]) * 100 == pytest.approx(float(ss_percent), abs=6e-4)
        assert p["lora_params"] == int(pc_params.replace(",", "")), preset

