"""Runs every command and Python block of docs/sonata.md against tiny data prepared here.

Each fenced ```bash / ```python block is preceded by `<!-- test: NAME -->`; the blocks run in document order in
one temporary folder holding what they name: `data/scannet` (Pointcept's ScanNet layout),
`checkpoints/concerto-large.pth` (a pretraining checkpoint), `checkpoints/sonata.pth` (bare backbone keys),
`model_last.pth` (a DefaultLORASegmentorV2 training checkpoint) and copies of `profiles/` whose named backbones
are replaced by tiny ones of the same kind (concatenated head or decoder) and whose runs take 2 steps.
`CONCERTO_LARGE_CONFIG` is swapped for the tiny backbone while the Python blocks run. `lora3d demo` is checked
to reach `run_demo` (the demo itself runs in test_demo_sonata.py). The preset table is checked against the
real backbones' counts (meta device).
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from tiny_sonata import (
    TINY_BACKBONE,
    TINY_DECODER,
    pointcept_lora_segmentor,
    randomised,
    write_pretraining_checkpoint,
    write_scannet_folders,
)

REPO = Path(__file__).resolve().parents[3]
DOC = REPO / "docs" / "sonata.md"
BLOCK_RE = re.compile(r"<!-- test: (?P<name>[\w-]+) -->\n```(?P<lang>bash|python)\n(?P<code>.*?)```", re.S)
TINY_FOR = {"sonata-base": TINY_BACKBONE, "concerto-base": TINY_BACKBONE, "concerto-large": TINY_BACKBONE,
            "sonata-base-decoder": TINY_DECODER}


def _blocks() -> list[tuple[str, str, str]]:
    return [(m["name"], m["lang"], m["code"]) for m in BLOCK_RE.finditer(DOC.read_text())]


def _commands(code: str) -> list[list[str]]:
    lines = [line for line in code.replace("\\\n", " ").splitlines() if line.strip() and not line.startswith("#")]
    return [shlex.split(line) for line in lines]


def _tiny_profile(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    model = data["model"]
    model["backbone"] = copy.deepcopy(TINY_FOR.get(model.get("backbone", "sonata-base"), model.get("backbone")))
    model["demo_base"] = False
    data.setdefault("data", {}).update(grid_size=0.1, point_budget=None, num_workers=0, synthetic_train=2,
                                       synthetic_val=1, synthetic_points=600)
    data.setdefault("train", {}).update(max_steps=2, epochs=1, batch_size=1, grad_accum=1, mixed_precision="no",
                                        eval_every=None, checkpoint_every=None, warmup_steps=0, device="cpu",
                                        gradient_checkpointing=False)
    data.setdefault("output", {})["tensorboard"] = False
    return data


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    write_scannet_folders(root / "data" / "scannet", num_train=2, num_val=1, num_points=500)
    student = write_pretraining_checkpoint(root / "checkpoints" / "concerto-large.pth")
    torch.save({k: v for k, v in student.items() if "mask_token" not in k}, root / "checkpoints" / "sonata.pth")
    seg = randomised(pointcept_lora_segmentor(TINY_BACKBONE, 20, r=8, alpha=16), 7)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in seg.state_dict().items()}},
               root / "model_last.pth")
    for path in (REPO / "profiles" / "sonata").glob("*.yaml"):
        dest = root / path.relative_to(REPO)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(yaml.safe_dump(_tiny_profile(path), sort_keys=False))
    return root


def test_every_code_block_is_mapped_to_a_runner():
    text = DOC.read_text()
    fenced = re.findall(r"^```(bash|python)$", text, re.M)
    blocks = _blocks()
    assert len(blocks) == len(fenced) >= 9
    assert len({name for name, _, _ in blocks}) == len(blocks)
    for _name, lang, code in blocks:
        if lang == "bash":
            assert all(argv[0] == "lora3d" for argv in _commands(code))
        else:
            compile(code, str(DOC), "exec")


def test_every_command_line_parses_and_its_profile_validates():
    from engine.cli import build_parser
    from engine.families.recipe import load_recipe

    for name, lang, code in _blocks():
        if lang != "bash":
            continue
        for argv in _commands(code):
            args = build_parser().parse_args(argv[1:])
            profile = getattr(args, "profile", None)
            if profile is None:
                continue
            # drop the paths only the workspace has; everything else must validate on a bare clone
            keep = [s for s in args.set if s.split("=")[0] not in ("data.root", "model.pretrained")]
            assert load_recipe(REPO / profile, keep).profile is not None, (name, argv)


def test_preset_table_counts_match_the_real_backbones():
    from engine.models.sonata import CONCERTO_LARGE_CONFIG, SONATA_BASE_CONFIG, count_lora_parameters

    rows = re.findall(r"^\| `([\w+-]+)` \| [^|]+\| [^|]+\| ([\d,]+) \| ([\d.]+) \| ([\d,]+) \| ([\d.]+) \|$",
                      DOC.read_text(), re.M)
    assert [r[0] for r in rows] == ["pointcept-lora", "attn", "attn+mlp", "linear"]
    for preset, cl, cl_pct, sb, sb_pct in rows:
        if preset == "linear":
            assert cl == sb == "0"
            continue
        targets = "qkv" if preset == "pointcept-lora" else preset
        for config, count, pct in ((CONCERTO_LARGE_CONFIG, cl, cl_pct), (SONATA_BASE_CONFIG, sb, sb_pct)):
            real = count_lora_parameters(config, 8, targets)
            assert real["lora"] == int(count.replace(",", "")), preset
            assert 100 * real["lora"] / real["base"] == pytest.approx(float(pct), abs=6e-4), preset


@pytest.mark.parametrize("name", [b[0] for b in _blocks()])
def test_doc_block_runs(name, workspace, monkeypatch, capsys):
    from engine.cli import main as cli_main
    from engine.families.sonata import demo

    monkeypatch.chdir(workspace)
    monkeypatch.setenv("LORA3D_CACHE", str(workspace / "cache"))
    monkeypatch.setenv("LORA3D_FAKE_GPU_GB", "24")
    monkeypatch.delenv("LORA3D_PLUGINS", raising=False)
    monkeypatch.setattr("engine.models.sonata.CONCERTO_LARGE_CONFIG", dict(TINY_BACKBONE))
    demo_calls = []
    monkeypatch.setattr(demo, "run_demo", lambda out, console=None, **kw: demo_calls.append(out) or {})
    _, lang, code = next(b for b in _blocks() if b[0] == name)
    if lang == "python":
        exec(compile(code, f"{DOC}:{name}", "exec"), {"__name__": f"doc_{name}"})
        return
    for argv in _commands(code):
        rc = cli_main(argv[1:])
        err = capsys.readouterr().err
        assert rc == 0, (name, argv, err[-2000:])
    if name == "demo":
        assert demo_calls == [Path("runs/demo")]
    if name == "export":
        state = torch.load(workspace / "model_last.pth", weights_only=True)["state_dict"]
        pointcept_lora_segmentor(TINY_BACKBONE, 20, r=8, alpha=16).load_state_dict(state, strict=True)
    if name == "merge":
        assert (workspace / "merged" / "model.pth").is_file()
