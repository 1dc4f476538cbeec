"""Promise: `--resume` never continues on another sample stream or another optimisation. Every resolved profile
key that could change either is in the checkpoint's identity (`engine.train.identity`), for every family,
through one path; a mismatch exits 2 listing every differing key with both values. A change of the
micro-batch split that keeps the effective batch resumes exactly (as OOM recovery does); a change of the
effective batch is refused, naming the keys that make it up.

The per-key tables vary each key of the resolved `model`, `lora`, `data` and `train` sections in turn (toy
in the default suite; SceneSplat and MIDI build a tiny model once, also default; their end-to-end refusals
through training are `slow`)."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from safetensors.torch import load_file

from engine.cli import main as cli_main
from engine.errors import CheckpointError, ProfileError
from engine.families.recipe import resolve_recipe
from engine.lora.inject import apply_lora_spec
from engine.train.identity import IGNORED_KEYS, identity_differences, run_identity
from engine.train.trainer import Trainer, TrainerHooks, train
from tests.conftest import toy_profile_dict

SECTIONS = ("model", "lora", "data", "train")

EXPECTED_IGNORED = {
    "name", "data.num_workers", "data.on_error", "train.eval_every", "train.checkpoint_every", "train.keep_last",
    "train.log_every", "train.device", "train.oom_recovery", "train.loss_spike_factor", "train.batch_size",
    "train.grad_accum", "train.gradient_checkpointing",
}
"""Keys that change neither the samples nor the optimisation (each with its reason in identity.py). A key
added there must be added here too: leaving a key out of the identity is a decision, not an accident."""

NOT_VARIED = {
    "model.family": "another family is another model: the architecture fingerprint differs as well",
    "model.task": "the family has one task",
    "lora.method": "`full` trains every weight: the trainable-tensor digest differs as well",
    "lora.preset": "a preset's values land in the keys it sets, which are varied themselves",
    "train.epochs": "`train.max_steps` is set, so epochs do not count (max_steps is varied)",
}
"""Keys the table does not vary, and why (each is still in the identity)."""


COMPANIONS = {("scenesplat", "data.root"): {"model.num_classes": 3}}
"""Keys a family only accepts together with another (SceneSplat: a dataset folder needs `model.num_classes`)."""


def _literals(annotation: Any) -> list[Any]:
    """The choices of a Literal annotation, found through Optional and list[...] wrappers."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [c for arg in typing.get_args(annotation) for c in _literals(arg)]


def _choices(recipe: Any, section: str, key: str, folder: Path) -> list[Any]:
    """Other valid values to try for one key, from its current value and its schema annotation; `folder` is an
    existing folder holding a file `base.pth`, for path keys."""
    value = recipe.profile.to_yaml_dict()[section][key]
    annotation = type(getattr(recipe.profile, section)).model_fields[key].annotation
    literals = _literals(annotation)
    candidates: list[Any] = [c for c in literals if c != value]
    if isinstance(value, bool):
        candidates.append(not value)
    elif isinstance(value, int):
        candidates += [value + 1, value - 1, value * 2]
    elif isinstance(value, float):
        candidates += [value * 0.5 if value else 0.5, value + 0.1, 0.5]
    elif isinstance(value, list):
        candidates += [value[:-1], value + value[:1], [0], ["x"], ["attn"], ["to_q"], literals[:1]]
    elif isinstance(value, str):
        candidates += [str(folder), str(folder / "base.pth"), "other"]
    elif value is None:
        candidates += [1, 2, 64, 0.5, True, [0], ["attn"], ["to_q"], [0.5], literals[:1], str(folder),
                       str(folder / "base.pth")]
    return [c for c in candidates if c != value]


def _vary(recipe: Any, section: str, key: str, folder: Path) -> tuple[Any, Any] | None:
    """(the changed recipe, the new value) for the first candidate the family accepts, or None."""
    companions = COMPANIONS.get((recipe.family.name, f"{section}.{key}"), {})
    for candidate in _choices(recipe, section, key, folder):
        try:
            changed = recipe.with_overrides({f"{section}.{key}": candidate, **companions})
        except ProfileError:
            continue
        new = changed.profile.to_yaml_dict()[section][key]
        if new != recipe.profile.to_yaml_dict()[section][key]:
            return changed, new
    return None


def _check_every_key(recipe: Any, model: Any, folder: Path) -> None:
    """Every identity key, varied alone, is listed with both values; reports the keys no value could vary."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.pth").write_bytes(b"not read: only the path is compared")
    base = run_identity(recipe, model)
    data = recipe.profile.to_yaml_dict()
    unvaried = []
    for section in SECTIONS:
        for key, value in data[section].items():
            dotted = f"{section}.{key}"
            if dotted in IGNORED_KEYS or dotted in recipe.family.identity_ignores or dotted in NOT_VARIED:
                continue
            varied = _vary(recipe, section, key, folder)
            if varied is None:
                unvaried.append(dotted)
                continue
            changed, new = varied
            diffs = identity_differences(base, run_identity(changed, model))
            assert f"{dotted}: checkpoint {value!r}, this run {new!r}" in diffs, (dotted, diffs)
    assert unvaried == [], f"keys the table found no other valid value for: {unvaried}"


def test_ignored_keys_are_the_decided_ones():
    assert set(IGNORED_KEYS) == EXPECTED_IGNORED


def test_toy_every_key_is_in_the_identity(tmp_path):
    recipe = resolve_recipe(toy_profile_dict(tmp_path))
    model = apply_lora_spec(recipe.family.build_model(recipe), recipe.lora)
    _check_every_key(recipe, model, tmp_path / "alt")
    # the family's own field goes through the same path (a toy identity field)
    assert run_identity(recipe, model)["toy"] == {"data_seeds": [7, 8]}


def test_scenesplat_every_key_is_in_the_identity(tmp_path):
    from tests.families.scenesplat.tiny_scenesplat import tiny_profile

    recipe = tiny_profile(tmp_path)
    model = apply_lora_spec(recipe.family.build_model(recipe), recipe.lora)
    _check_every_key(recipe, model, tmp_path / "alt")


@pytest.fixture(scope="module")
def midi_base(tmp_path_factory):
    from engine.models.dit.pipeline import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("midi") / "base", seed=0)


def _midi_data(base: Path, tmp_path: Path, **sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "schema_version": 1, "name": "midi-identity",
        "model": {"family": "midi", "task": "flow", "pretrained": str(base), "num_tokens": 16,
                  "num_instances_per_batch": 3, "mi_blocks": [1]},
        "lora": {"r": 4, "alpha": 8},
        "data": {"cache_dir": str(tmp_path / "cache"), "eval_chamfer_every": 0, "synthetic_train_scenes": 2,
                 "synthetic_val_scenes": 1, "synthetic_image_size": 32, "synthetic_num_samples": 256},
        "train": {"max_steps": 2, "batch_size": 1, "lr": 0.01, "device": "cpu", "seed": 0},
        "output": {"dir": str(tmp_path / "run"), "tensorboard": False},
    }
    for key, value in sections.items():
        data[key].update(value)
    return data


def test_midi_every_key_is_in_the_identity_and_the_family_fields_too(midi_base, tmp_path):
    """MIDI's resolved multi-instance blocks come from `MidiFamily.identity`, through `run_identity`."""
    recipe = resolve_recipe(_midi_data(midi_base, tmp_path))
    model = apply_lora_spec(recipe.family.build_model(recipe), recipe.lora)
    _check_every_key(recipe, model, tmp_path / "alt")
    assert run_identity(recipe, model)["midi"] == {"mi_blocks": [1]}
    saved = run_identity(recipe, model)
    saved["midi"] = {"mi_blocks": [0, 1]}
    assert "midi.mi_blocks: checkpoint [0, 1], this run [1]" in identity_differences(saved, run_identity(recipe, model))
    # how the run is evaluated is declared outside the identity: changing it never blocks a resume
    assert {"data.eval_sample_steps", "data.eval_chamfer_every"} <= recipe.family.identity_ignores
    other = recipe.with_overrides({"data.eval_sample_steps": 3, "data.eval_chamfer_every": 5})
    assert identity_differences(run_identity(recipe, model), run_identity(other, model)) == []


# ---------------------------------------------------------------------- end to end (toy)
def _write(tmp_path, name="p.yaml", **sections):
    data = toy_profile_dict(tmp_path, **sections)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _stop_at(step):
    def hook(trainer):
        if trainer.state.step == step:
            trainer.request_stop("test")

    return hook


def test_resume_with_changed_keys_lists_every_one(tmp_path, capsys):
    train(resolve_recipe(toy_profile_dict(tmp_path, train={"max_steps": 2})))
    before = sorted(p.name for p in (tmp_path / "run").rglob("*"))
    resolved = (tmp_path / "run" / "profile.resolved.yaml").read_bytes()
    path = _write(tmp_path, train={"max_steps": 2, "seed": 5, "lr": 0.01},
                  data={"num_train": 40}, lora={"dropout": 0.1})
    assert cli_main(["train", str(path), "--quiet", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1
    for line in ("train.seed: checkpoint 0, this run 5", "train.lr: checkpoint 0.05, this run 0.01",
                 "data.num_train: checkpoint 32, this run 40", "data.size: checkpoint 32, this run 40",
                 "lora.dropout: checkpoint 0.0, this run 0.1"):
        assert line in err, (line, err)
    after = sorted(p.name for p in (tmp_path / "run").rglob("*"))
    assert [n for n in after if n not in before] == []  # no new file: no checkpoint, no adapter
    assert (tmp_path / "run" / "profile.resolved.yaml").read_bytes() == resolved  # the run's own, kept


def test_changed_effective_batch_is_refused_naming_its_keys(tmp_path):
    """Before: a changed `train.batch_size` crashed with an IndexError (issue 14 item 4)."""
    train(resolve_recipe(toy_profile_dict(tmp_path, train={"max_steps": 2})))
    with pytest.raises(CheckpointError) as info:
        train(resolve_recipe(toy_profile_dict(tmp_path, train={"max_steps": 2, "batch_size": 4})), resume=True)
    message = str(info.value)
    assert "train.effective_batch: checkpoint 4, this run 8" in message
    assert "train.batch_size: checkpoint 2, this run 4" in message and "grad_accum" not in message


def test_changed_split_with_the_same_effective_batch_resumes_exactly(tmp_path):
    """2 x 2 for three steps, then 1 x 4 (or 4 x 1): same samples per step, same adapter as a straight run."""
    straight = train(resolve_recipe(toy_profile_dict(tmp_path / "a")))
    for micro, accum, where in ((1, 4, "b"), (4, 1, "c")):
        first = Trainer(resolve_recipe(toy_profile_dict(tmp_path / where)), hooks=TrainerHooks(after_step=_stop_at(3)),
                        install_signal_handlers=False).run()
        assert first.status == "stopped"
        resumed = train(resolve_recipe(toy_profile_dict(tmp_path / where, train={"batch_size": micro,
                                                                                 "grad_accum": accum})), resume=True)
        assert resumed.losses == pytest.approx(straight.losses[3:], abs=1e-6)
        a = load_file(str(tmp_path / "a" / "run" / "adapter" / "adapter_model.safetensors"))
        b = load_file(str(tmp_path / where / "run" / "adapter" / "adapter_model.safetensors"))
        assert all(float((a[k] - b[k]).abs().max()) <= 1e-6 for k in a)
        events = [json.loads(line) for line in (tmp_path / where / "run" / "events.jsonl").read_text().splitlines()]
        note = [e["message"] for e in events if e["type"] == "info" and "resuming with micro-batch" in e["message"]]
        assert note and f"micro-batch {micro}" in note[0] and "effective batch (4)" in note[0]
        resolved = yaml.safe_load((tmp_path / where / "run" / "profile.resolved.yaml").read_text())
        assert (resolved["train"]["batch_size"], resolved["train"]["grad_accum"]) == (micro, accum)


def test_an_oom_reduced_micro_batch_survives_a_resume_with_the_same_profile(tmp_path):
    import torch

    def oom_above_one(trainer, indices):
        if len(indices) > 1:
            raise torch.OutOfMemoryError("fake")

    recipe = resolve_recipe(toy_profile_dict(tmp_path))
    Trainer(recipe, hooks=TrainerHooks(before_micro_batch=oom_above_one, after_step=_stop_at(2)),
            install_signal_handlers=False).run()
    seen = []
    train(resolve_recipe(toy_profile_dict(tmp_path)), resume=True,
          hooks=TrainerHooks(before_micro_batch=lambda t, indices: seen.append(len(indices))))
    assert set(seen) == {1}  # no second round of out-of-memory errors


def test_gradient_checkpointing_can_be_switched_on_for_a_resume(tmp_path):
    """The one memory lever that changes neither samples nor maths: allowed on --resume."""
    Trainer(resolve_recipe(toy_profile_dict(tmp_path)), hooks=TrainerHooks(after_step=_stop_at(2)),
            install_signal_handlers=False).run()
    result = train(resolve_recipe(toy_profile_dict(tmp_path, train={"gradient_checkpointing": True})), resume=True)
    assert result.status == "completed" and result.step == 6 and len(result.losses) == 4


# ---------------------------------------------------------------------- end to end (real families, slow)
@pytest.mark.slow
def test_scenesplat_resume_refuses_a_changed_data_key(tmp_path):
    from tests.families.scenesplat.tiny_scenesplat import tiny_profile

    train(tiny_profile(tmp_path, train={"max_steps": 1}), install_signal_handlers=False)
    changed = tiny_profile(tmp_path, train={"max_steps": 1}, data={"grid_size": 0.2, "synthetic_domain": "A"})
    with pytest.raises(CheckpointError) as info:
        train(changed, resume=True, install_signal_handlers=False)
    assert "data.grid_size: checkpoint 0.1, this run 0.2" in str(info.value)
    assert "data.synthetic_domain: checkpoint 'B', this run 'A'" in str(info.value)


@pytest.mark.slow
def test_midi_resume_refuses_changed_tokens_and_instances(midi_base, tmp_path):
    train(resolve_recipe(_midi_data(midi_base, tmp_path, train={"max_steps": 1})), install_signal_handlers=False)
    changed = resolve_recipe(_midi_data(midi_base, tmp_path, train={"max_steps": 1},
                                        model={"num_tokens": 8, "num_instances_per_batch": 2}))
    with pytest.raises(CheckpointError) as info:
        train(changed, resume=True, install_signal_handlers=False)
    assert "model.num_tokens: checkpoint 16, this run 8" in str(info.value)
    assert "model.num_instances_per_batch: checkpoint 3, this run 2" in str(info.value)
