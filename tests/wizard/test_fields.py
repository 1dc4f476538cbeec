"""The one field table and parser the plan screen and the plain wizard share, and the draft snapshot."""

from __future__ import annotations

from pathlib import Path

from tests.wizard.conftest import fake_hardware
from wizard.draft import ProfileDraft
from wizard.fields import FIELDS, PLAN_FIELDS, parse_answer, parse_field, set_field
from wizard.plain import plain_questions


def test_parse_field_types():
    assert parse_field("rank", " 8 ") == (8, None)
    assert parse_field("max_steps", "") == (None, None)
    assert parse_field("lr", "1e-4") == (1e-4, None)
    assert parse_field("target_modules", "attn, mlp") == (["attn", "mlp"], None)
    assert parse_field("batch_size", "2.5")[1].startswith("`train.batch_size` must be a whole number")
    assert parse_field("target_modules", " , ")[1].startswith("`lora.target_modules` needs at least one")
    assert parse_field("grad_accum", "0") == (None, "`train.grad_accum` must be at least 1, got 0. Use a whole number "
                                              "greater than or equal to 1.")
    assert parse_field("extra", "model.r=4 train.lr=1e-3") == (["model.r=4", "train.lr=1e-3"], None)
    assert "KEY=VALUE" in parse_field("extra", "no_equals_sign")[1]


def test_path_fields_return_the_path_even_when_missing(tmp_path):
    assert parse_field("data_root", "") == (None, None)
    assert parse_field("data_root", str(tmp_path)) == (tmp_path, None)
    value, error = parse_field("pretrained", "/no/such/base.pth")
    assert value == Path("/no/such/base.pth") and error.startswith("/no/such/base.pth: not found.")
    assert parse_field("save_path", str(tmp_path / "a.yml")) == (tmp_path / "a.yml", None)
    assert "the profile must be a .yaml file, got 'a.txt'" in parse_field("save_path", "a.txt")[1]
    (tmp_path / "dir.yaml").mkdir()
    assert "is a folder" in parse_field("save_path", str(tmp_path / "dir.yaml"))[1]


def test_choice_answers_are_checked_against_the_family(tmp_path):
    draft = ProfileDraft(hardware=fake_hardware(1, 24.0))
    draft.set_family("scenesplat")
    assert parse_answer(draft, "precision", "bf16") == ("bf16", None)
    assert parse_answer(draft, "precision", "fp8")[1] == "`train.mixed_precision` must be one of `no`, `bf16`, " \
        "`fp16`, got 'fp8'."
    assert parse_answer(draft, "gradient_checkpointing", True) == (True, None)
    assert parse_answer(draft, "gradient_checkpointing", "off") == (False, None)
    assert parse_answer(draft, "task", "lang") == ("lang", None)
    assert "`model.task` must be one of `semseg`, `lang`" in parse_answer(draft, "task", "flow")[1]
    assert "`lora.preset` must be one of `minimal`, `standard`" in parse_answer(draft, "preset", "huge")[1]
    set_field(draft, "task", "lang")
    assert draft.profile_dict()["model"]["task"] == "lang"


def test_plain_and_plan_read_the_same_table(tmp_path):
    draft = ProfileDraft(hardware=fake_hardware(1, 24.0))
    draft.set_family("scenesplat")
    questions = {q.key: q for q in plain_questions(draft, tmp_path)}
    for name, question in questions.items():
        assert question.message == FIELDS[name].question
    assert set(questions) - {"pretrained", "data_root", "extra", "save_path"} <= set(PLAN_FIELDS)
    assert questions["task"].choices == [("semseg", "semseg"), ("lang", "lang")]
    assert questions["rank"].check(draft, "eight") == parse_field("rank", "eight")[1]
    # a demo keeps its own base, task and settings: those questions are not asked
    demo = ProfileDraft(hardware=fake_hardware(0))
    demo.set_family("scenesplat", demo=True)
    assert {q.key for q in plain_questions(demo, tmp_path)} == {"data_root", "rank", "batch_size",
                                                                "gradient_checkpointing", "precision", "save_path"}


def test_snapshot_is_a_copy():
    draft = ProfileDraft(hardware=fake_hardware(1, 24.0))
    draft.set_family("scenesplat")
    copy = draft.snapshot()
    draft.plan.rank = 3
    draft.extra.append("train.seed=4")
    assert copy.plan.rank != 3 and copy.extra == [] and copy.hardware == draft.hardware
