"""Malformed profiles: each one exits 2 with one message naming the file, the key and the fix."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import toy_profile_dict
from tests.malformed.builders import folder_digest
from tests.malformed.harness import assert_one_message, run_cli


def _base(tmp_path) -> str:
    return yaml.safe_dump(toy_profile_dict(tmp_path), sort_keys=False)


# (case id, how to make the file's content from the valid text, expected message fragments)
CASES = [
    ("truncated-yaml", lambda t: t[: t.index("train:")] + "train:\n  max_steps: [6, 7\n", ("invalid YAML", "line")),
    ("binary-garbage", lambda t: b"\x00\xff\xfe\x80PK" * 40, ("cannot be read as UTF-8",)),
    ("wrong-type-r", lambda t: t.replace("r: 4", "r: eight"), ("`lora.r`", "'eight'", "whole number")),
    ("huge-int-r", lambda t: t.replace("r: 4", "r: 100000000000000000000000000"), ("`lora.r`", "1024")),
    ("huge-float-steps", lambda t: t.replace("max_steps: 6", "max_steps: 1.0e+30"), ("`train.max_steps`",)),
    ("huge-batch", lambda t: t.replace("batch_size: 2", "batch_size: 99999999999999999999"), ("`train.batch_size`",)),
    ("nan-lr", lambda t: t.replace("lr: 0.05", "lr: .nan"), ("`train.lr`", "nan")),
    ("inf-lr", lambda t: t.replace("lr: 0.05", "lr: .inf"), ("`train.lr`", "inf")),
    ("negative-lr", lambda t: t.replace("lr: 0.05", "lr: -1"), ("`train.lr`", "-1", "larger value")),
    ("tab-indent", lambda t: t.replace("  r: 4", "\tr: 4"), ("invalid YAML", "\\t")),
    ("empty-file", lambda t: "", ("profile is empty", "profiles/")),
    ("comments-only", lambda t: "# nothing here\n", ("profile is empty",)),
    ("top-level-list", lambda t: "- model\n- lora\n", ("YAML mapping", "list")),
    ("python-tag", lambda t: t.replace("name: toy", "name: !!python/object/apply:os.system [ls]"), ("invalid YAML",)),
    ("typo-key", lambda t: t.replace("  r: 4", "  rnak: 4"), ("unknown key `lora.rnak`", "Did you mean `lora.r`")),
    ("null-section", lambda t: t.replace("lora:\n  r: 4\n  alpha: 8\n", "lora:\n"), ("`lora`", "mapping")),
    ("unknown-family", lambda t: t.replace("family: toy", "family: tyo"), ("`model.family`", "Did you mean `toy`")),
    ("schema-version-2", lambda t: t.replace("schema_version: 1", "schema_version: 2"), ("`schema_version`",)),
]


@pytest.mark.parametrize(("case", "mutate", "needles"), CASES, ids=[c[0] for c in CASES])
def test_malformed_profile(tmp_path, capsys, case, mutate, needles):
    path = tmp_path / f"{case}.yaml"
    content = mutate(_base(tmp_path))
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    code, err = run_cli(["validate", str(path)], capsys)
    assert_one_message(code, err, (str(path), *needles))


def test_missing_profile_file(tmp_path, capsys):
    code, err = run_cli(["validate", str(tmp_path / "nope.yaml")], capsys)
    assert_one_message(code, err, (str(tmp_path / "nope.yaml"), "profile not found"))


def test_profile_path_is_a_folder(tmp_path, capsys):
    code, err = run_cli(["validate", str(tmp_path)], capsys)
    assert_one_message(code, err, (str(tmp_path), "is a folder"))


def test_override_without_value(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(_base(tmp_path))
    code, err = run_cli(["validate", str(path), "--set", "lora.r"], capsys)
    assert_one_message(code, err, ("'lora.r'", "expected KEY=VALUE"))


def test_every_problem_reported_in_one_message(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(_base(tmp_path).replace("r: 4", "r: 0").replace("lr: 0.05", "lr: -1"))
    code, err = run_cli(["validate", str(path)], capsys)
    assert_one_message(code, err, ("`lora.r`", "`train.lr`"))


def test_bad_profile_leaves_an_existing_run_untouched(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(toy_profile_dict(tmp_path, train={"max_steps": 2}), sort_keys=False))
    assert run_cli(["train", str(path), "--quiet"], capsys)[0] == 0
    before = folder_digest(tmp_path / "run")
    code, err = run_cli(["train", str(path), "--quiet", "--resume", "--set", "lora.r=0"], capsys)
    assert_one_message(code, err, ("`lora.r`",))
    code, err = run_cli(["train", str(path), "--quiet"], capsys)  # no --resume into a run with checkpoints
    assert_one_message(code, err, ("already holds checkpoints", "--resume", "nothing was changed"))
    assert folder_digest(tmp_path / "run") == before


def test_duplicate_section_is_reported(tmp_path, capsys):
    path = tmp_path / "dup.yaml"
    path.write_text(_base(tmp_path) + "train:\n  lr: 0.1\n")
    code, err = run_cli(["validate", str(path)], capsys)
    assert_one_message(code, err, (str(path), "train"))


def test_boolean_for_an_integer_is_refused(tmp_path, capsys):
    path = tmp_path / "bool.yaml"
    path.write_text(_base(tmp_path).replace("r: 4", "r: true"))
    code, err = run_cli(["validate", str(path)], capsys)
    assert_one_message(code, err, (str(path), "`lora.r`"))


def test_output_dir_is_a_file(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("precious")
    data = toy_profile_dict(tmp_path)
    data["output"]["dir"] = str(target)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    code, err = run_cli(["train", str(path), "--quiet"], capsys)
    assert target.read_text() == "precious"
    assert_one_message(code, err, (str(target), "`output.dir`"))
