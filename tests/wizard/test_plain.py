"""The plain (questionary) wizard with scripted answers, and `lora3d watch --plain`."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from engine.errors import ProfileError
from tests.wizard.conftest import REPO_ROOT, fake_hardware, synthetic_events, write_events
from wizard.draft import ProfileDraft
from wizard.plain import answers_from, family_question, plain_questions, run_plain


def test_defaults_write_the_demo_profile(tmp_path):
    draft = ProfileDraft(hardware=fake_hardware(0))
    path = run_plain(draft, answers_from({}), tmp_path)
    assert path == tmp_path / "wizard-demo.yaml"
    data = yaml.safe_load(path.read_text())
    assert data["model"]["family"] == "scenesplat" and data["model"]["demo_base"] is True
    assert data["lora"]["r"] == 8 and data["train"]["batch_size"] == 2
    assert path.read_text().startswith("# Written by the lora3d wizard")
    # a second run never overwrites: the suggested name moves on
    assert run_plain(ProfileDraft(hardware=fake_hardware(0)), answers_from({}), tmp_path) == tmp_path / "wizard-demo-2.yaml"


def test_scripted_answers_for_a_real_family(tmp_path):
    data_root = tmp_path / "scenes"
    (data_root / "train").mkdir(parents=True)
    answers = {"family": "scenesplat", "data_root": str(data_root), "rank": "16", "batch_size": "4",
               "extra": "model.num_classes=20",
               "gradient_checkpointing": True, "precision": "bf16", "save_path": str(tmp_path / "mine.yaml")}
    path = run_plain(ProfileDraft(hardware=fake_hardware(1, 24.0)), answers_from(answers), tmp_path)
    data = yaml.safe_load(path.read_text())
    assert data["model"]["family"] == "scenesplat" and data["data"]["root"] == str(data_root)
    assert data["lora"]["r"] == 16 and data["train"]["batch_size"] == 4 and data["model"]["num_classes"] == 20
    assert data["train"]["gradient_checkpointing"] is True and data["train"]["mixed_precision"] == "bf16"


def test_recommended_defaults_follow_the_gpu(tmp_path):
    draft = ProfileDraft(hardware=fake_hardware(1, 16.0))
    draft.set_family("midi")
    defaults = {q.key: q.default for q in plain_questions(draft, tmp_path)}
    assert defaults["rank"] == "16" and defaults["batch_size"] == "4" and defaults["precision"] == "bf16"
    assert "pretrained" in defaults


@pytest.mark.parametrize("answers, message", [
    ({"rank": "eight"}, "`lora.r` must be a whole number, got 'eight'."),
    ({"batch_size": "0"}, "`train.batch_size` must be at least 1, got 0."),
    ({"data_root": "/no/such/folder"}, "/no/such/folder: not found."),
    ({"save_path": "x.txt"}, "the profile must be a .yaml file"),
])
def test_bad_answers_are_reported(tmp_path, answers, message):
    with pytest.raises(ProfileError, match=None) as info:
        run_plain(ProfileDraft(hardware=fake_hardware(0)), answers_from(answers), tmp_path)
    assert message in str(info.value)


def test_existing_file_needs_confirmation(tmp_path):
    target = tmp_path / "taken.yaml"
    target.write_text("keep\n")
    with pytest.raises(ProfileError, match="exists and was kept"):
        run_plain(ProfileDraft(hardware=fake_hardware(0)), answers_from({"save_path": str(target)}), tmp_path)
    assert target.read_text() == "keep\n"
    run_plain(ProfileDraft(hardware=fake_hardware(0)), answers_from({"save_path": str(target)}), tmp_path,
              confirm_overwrite=lambda path: True)
    assert "schema_version: 1" in target.read_text()


def test_watch_plain_cli_and_bad_run_dir(tmp_path):
    write_events(tmp_path / "run", synthetic_events(steps=2, total=2, end="completed"))
    cmd = [sys.executable, "-m", "engine", "watch", str(tmp_path / "run"), "--plain"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert "step 2/2 loss 1.9" in done.stdout and done.stdout.strip().endswith("adapter runs/fake/adapter")
    bad = subprocess.run([sys.executable, "-m", "engine", "watch", str(tmp_path / "nope")], capture_output=True,
                         text=True, timeout=120, cwd=REPO_ROOT)
    assert bad.returncode == 2 and "run directory not found" in bad.stderr


def test_a_plugin_family_is_a_plain_choice(tmp_path):
    draft = ProfileDraft(hardware=fake_hardware(0))
    question = family_question(draft)
    assert ("Toy: a two-block regression model (engine tests)", "toy") in question.choices
    assert question.default == question.choices[0][1] and question.default.startswith("demo-")
    path = run_plain(draft, answers_from({"family": "toy", "rank": "2"}), tmp_path)
    data = yaml.safe_load(path.read_text())
    assert path.name == "toy-lora.yaml" and data["model"]["family"] == "toy" and data["lora"]["r"] == 2
    with pytest.raises(ProfileError, match="`model.family` must be one of .*got 'nope'"):
        run_plain(ProfileDraft(hardware=fake_hardware(0)), answers_from({"family": "nope"}), tmp_path)


@pytest.mark.slow  # a real child training run of the toy family: about 15 s on 2 busy cores
def test_plain_wizard_trains_a_plugin_family_and_follows_it(tmp_path, monkeypatch):
    import io

    from wizard.commands import run_plain_wizard

    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    code = run_plain_wizard(demo=False, profiles_dir=tmp_path, out=out, answers={"family": "toy"})
    text = out.getvalue()
    assert code == 0, text
    assert f"profile saved to {tmp_path / 'toy-lora.yaml'}" in text
    assert "start toy-lora (toy/regress) on cpu" in text and "end: completed at step 8" in text
    assert (tmp_path / "runs" / "toy-lora" / "adapter" / "adapter_config.json").is_file()
