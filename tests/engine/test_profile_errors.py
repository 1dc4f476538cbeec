"""Profile validation: every malformed profile gives one ProfileError naming the key and the fix."""

from __future__ import annotations

import pytest

from engine.errors import ProfileError
from engine.families.recipe import load_recipe, resolve_recipe
from engine.profile.load import apply_overrides, parse_overrides, read_yaml
from tests.conftest import REPO, toy_profile_dict

CASES = [
    # (mutation, expected message fragments)
    ({"lora": {"rnak": 4}}, ["unknown key `lora.rnak`", "Did you mean `lora.r`?"]),
    ({"train": {"bacth_size": 4}}, ["unknown key `train.bacth_size`", "Did you mean `train.batch_size`?"]),
    ({"trian": {"lr": 1}}, ["unknown key `trian`", "Did you mean `train`?"]),
    ({"lora": {"r": 0}}, ["`lora.r`", "greater than or equal to 1", "got 0"]),
    ({"train": {"batch_size": 0}}, ["`train.batch_size`", "got 0", "Use a larger value"]),
    ({"train": {"lr": "fast"}}, ["`train.lr`", "got 'fast'", "Use a number"]),
    ({"train": {"lr": -1e-4}}, ["`train.lr`", "greater than 0"]),
    ({"lora": {"dropout": 1.5}}, ["`lora.dropout`", "less than 1"]),
    ({"train": {"mixed_precision": "fp8"}}, ["`train.mixed_precision`", "'no', 'bf16' or 'fp16'", "got 'fp8'"]),
    ({"train": {"gradient_checkpointing": "maybe"}}, ["`train.gradient_checkpointing`", "Use true or false"]),
    ({"lora": {"target_stages": 3}}, ["`lora.target_stages`", "Use a YAML list"]),
    ({"lora": {"target_stages": [0, 5]}}, ["`lora.target_stages` out of range", "Valid stages: [0, 1]"]),
    ({"lora": {"target_stages": [1, 1]}}, ["`lora.target_stages` lists a stage twice"]),
    ({"model": {"family": "scenesplatt"}}, ["`model.family` is not a known family", "Did you mean `scenesplat`?"]),
    ({"data": {"root": "/no/such/folder"}}, ["`data.root` folder does not exist", "/no/such/folder"]),
    ({"model": {"pretrained": "/no/such.pth"}}, ["`model.pretrained` not found", "/no/such.pth"]),
    ({"schema_version": 2}, ["`schema_version` must be 1, got 2"]),
    ({"launch": {"machine_rank": 2, "num_machines": 2}}, ["`launch.machine_rank` must be below"]),
    ({"train": {"epochs": None, "max_steps": None}}, ["set `train.epochs` or `train.max_steps`"]),
    ({"model": {"num_blocks": 0}}, ["`model.num_blocks`", "got 0"]),
    ({"data": {"num_trian": 3}}, ["unknown key `data.num_trian`", "Did you mean `data.num_train`?"]),
]


def _mutate(base, mutation):
    for key, value in mutation.items():
        if isinstance(value, dict):
            base.setdefault(key, {}).update(value)
        else:
            base[key] = value
    return base


@pytest.mark.parametrize("mutation, fragments", CASES, ids=[str(c[0]) for c in CASES])
def test_malformed_profile_message(tmp_path, mutation, fragments):
    data = _mutate(toy_profile_dict(tmp_path), mutation)
    with pytest.raises(ProfileError) as info:
        resolve_recipe(data, source="p.yaml")
    message = str(info.value)
    assert message.startswith("p.yaml: ")
    for fragment in fragments:
        assert fragment in message, message


def test_all_errors_reported_together(tmp_path):
    data = _mutate(toy_profile_dict(tmp_path), {"lora": {"r": 0, "rnak": 2}, "train": {"lr": "x"}})
    with pytest.raises(ProfileError) as info:
        resolve_recipe(data, source="p.yaml")
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert all(line.startswith("p.yaml: ") for line in lines)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "the profile is empty"),
        ("model: [1, 2\n", "invalid YAML at line"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("model:\n  family: toy\n", "`schema_version` is required"),
        ("schema_version: 1\n", "`model` is required"),
        ("!!python/object/apply:os.system ['echo pwned']\n", "invalid YAML"),
    ],
)
def test_bad_yaml_files(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError) as info:
        load_recipe(path)
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_missing_profile_file(tmp_path):
    with pytest.raises(ProfileError, match="profile not found"):
        read_yaml(tmp_path / "nope.yaml")


def test_overrides_parse_types():
    pairs = dict(parse_overrides(["lora.r=8", "train.lr=2e-4", "train.gradient_checkpointing=true",
                                  "lora.target_stages=[3, 4]", "save_path=exp_runs/x", "model.pretrained=a.pth"]))
    assert pairs["lora.r"] == 8
    assert pairs["train.lr"] == pytest.approx(2e-4)
    assert pairs["train.gradient_checkpointing"] is True
    assert pairs["lora.target_stages"] == [3, 4]
    assert pairs["output.dir"] == "exp_runs/x"  # Pointcept-style alias
    assert pairs["model.pretrained"] == "a.pth"


def test_override_applies_and_validates(tmp_path, write_profile):
    path = write_profile(toy_profile_dict(tmp_path))
    profile = load_recipe(path, ["lora.r=16", "train.lr=3e-4", "lora_training.pretrained_path=" + str(path)]).profile
    assert profile.lora.r == 16
    assert profile.train.lr == pytest.approx(3e-4)
    assert profile.model.pretrained == path
    with pytest.raises(ProfileError, match="unknown key `lora.rank_`"):
        load_recipe(path, ["lora.rank_=3"])
    with pytest.raises(ProfileError, match="expected KEY=VALUE"):
        load_recipe(path, ["lora.r"])


def test_apply_overrides_does_not_touch_input():
    data = {"lora": {"r": 4}}
    out = apply_overrides(data, [("lora.r", 8), ("train.lr", 1.0)])
    assert data == {"lora": {"r": 4}}
    assert out == {"lora": {"r": 8}, "train": {"lr": 1.0}}


def test_effective_batch(tmp_path):
    profile = resolve_recipe(_mutate(toy_profile_dict(tmp_path), {"train": {"batch_size": 3, "grad_accum": 4},
                                                                    "launch": {"num_processes": 2}})).profile
    assert profile.effective_batch == 24


def test_every_schema_key_is_documented():
    from engine.profile import schema

    doc = (REPO / "docs" / "profiles.md").read_text()
    for section, cls in [("model", schema.ModelSection), ("lora", schema.LoraSection), ("data", schema.DataSection),
                         ("train", schema.TrainSection), ("output", schema.OutputSection),
                         ("previews", schema.PreviewsSection), ("launch", schema.LaunchSection), ("hardware", schema.HardwareSection)]:
        for key in cls.model_fields:
            assert f"`{section}.{key}`" in doc, f"{section}.{key} missing from docs/profiles.md"


def test_unquoted_no_is_mixed_precision_no(tmp_path, write_profile):
    data = toy_profile_dict(tmp_path)
    path = write_profile(data)
    profile = load_recipe(path, ["train.mixed_precision=no"]).profile
    assert profile.train.mixed_precision == "no"
    text = path.read_text().replace("train:\n", "train:\n  mixed_precision: no\n", 1)
    path.write_text(text)
    assert load_recipe(path).profile.train.mixed_precision == "no"


def test_repeated_set_flags_accumulate(tmp_path, write_profile):
    from engine.cli import build_parser

    args = build_parser().parse_args(["validate", "p.yaml", "--set", "lora.r=8", "--set", "train.lr=1e-3"])
    assert args.set == ["lora.r=8", "train.lr=1e-3"]


@pytest.mark.parametrize(("device", "cores", "expected"), [("cpu", 16, 0), ("cuda", 16, 4), ("cuda", 2, 1), ("cuda", 1, 0)])
def test_auto_loader_workers(device, cores, expected):
    from engine.families.base import auto_workers

    assert auto_workers(device, cores) == expected


def test_num_workers_auto_is_resolved_and_said(tmp_path, write_profile):
    recipe = load_recipe(write_profile(toy_profile_dict(tmp_path)), ["train.device=cpu"])
    assert recipe.profile.data.num_workers == 0
    assert any(n.startswith("data.num_workers: auto -> 0 on this cpu machine") for n in recipe.notes)
    explicit = load_recipe(write_profile(toy_profile_dict(tmp_path)), ["data.num_workers=3"])
    assert explicit.profile.data.num_workers == 3 and not any("num_workers" in n for n in explicit.notes)
    with pytest.raises(ProfileError, match=r"data.num_workers.*0..64, got 65"):
        load_recipe(write_profile(toy_profile_dict(tmp_path)), ["data.num_workers=65"])
