"""Tests MIDI's training layout (padding, sub-sampling, real counts) and the family's profile checks."""

from __future__ import annotations

import pytest
import torch
from midi_helpers import midi_env_fixture, midi_profile, midi_profile_dict, one_thread_fixture  # noqa: F401

from engine.errors import ProfileError
from engine.families.midi.data import choose_instances, collate_scenes
from engine.families.midi.family import MidiFamily, resolve_mi_blocks
from engine.families.recipe import resolve_recipe
from engine.families.registry import get_family
from engine.lora.inject import apply_lora_spec
from engine.models.dit import TripoSGDiTModel


@pytest.mark.parametrize("count, slots", [(2, 5), (3, 3), (7, 4), (1, 4)])
def test_choose_instances_pads_with_duplicates_or_subsamples(count, slots):
    chosen, real = choose_instances(count, slots, seed=0, epoch=0, index=3)
    assert len(chosen) == slots and real == min(count, slots)
    assert all(0 <= i < count for i in chosen)
    if count < slots:
        assert chosen[:count] == list(range(count))  # every real instance once, then duplicates
    else:
        assert len(set(chosen)) == slots  # a subset without repeats
    assert choose_instances(count, slots, 0, 0, 3) == (chosen, real)  # deterministic


def test_choose_instances_changes_with_epoch_but_not_between_calls():
    draws = {tuple(choose_instances(9, 4, 0, epoch, 0)[0]) for epoch in range(6)}
    assert len(draws) > 1


def test_collate_lays_out_scenes_of_k_slots_with_real_counts():
    samples = [{"latent_mean": torch.zeros(4, 2, 3), "num_instances": n, "scene": f"s{n}"} for n in (2, 4)]
    batch = collate_scenes(samples)
    assert batch["latent_mean"].shape == (8, 2, 3)
    assert batch["num_instances_per_batch"] == 4
    assert batch["num_instances"].tolist() == [2, 4]
    assert batch["real"].tolist() == [True, True, False, False, True, True, True, True]


def test_multi_instance_attention_sees_only_the_real_instances(one_thread):
    torch.manual_seed(0)
    dit = TripoSGDiTModel(num_attention_heads=2, width=16, in_channels=4, num_layers=3, cross_attention_dim=8,
                          cross_attention_2_dim=6).eval()
    dit.set_multi_instance_attention([1])
    slots, real = 4, 2
    x = torch.randn(slots, 5, 4)
    c1, c2 = torch.randn(slots, 1, 8), torch.randn(slots, 3, 6)
    t = torch.full((slots,), 300.0)
    kwargs = {"num_instances": [real], "num_instances_per_batch": slots}
    with torch.no_grad():
        padded = dit(x, t, c1, c2, attention_kwargs=kwargs).sample
        # The real instances alone, in the inference layout, give the same outputs ...
        alone = dit(x[:real], t[:real], c1[:real], c2[:real], attention_kwargs={"num_instances": real}).sample
        # ... and different padding content does not reach them.
        x2 = x.clone()
        x2[real:] = torch.randn(slots - real, 5, 4)
        repadded = dit(x2, t, c1, c2, attention_kwargs=kwargs).sample
        # Each padding slot attends only to itself.
        single = dit(x[real:real + 1], t[:1], c1[real:real + 1], c2[real:real + 1]).sample
    torch.testing.assert_close(padded[:real], alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(repadded[:real], padded[:real], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(padded[real:real + 1], single, rtol=1e-5, atol=1e-6)
    # With all slots real, the padding rows would change the real outputs: the layout matters.
    joint = dit(x, t, c1, c2, attention_kwargs={"num_instances": [slots], "num_instances_per_batch": slots}).sample
    assert not torch.allclose(joint[:real], padded[:real], atol=1e-4)


def test_registry_and_family_declarations(midi_env, tmp_path):
    family = get_family("midi")
    assert isinstance(family, MidiFamily)
    task = midi_profile(midi_env, tmp_path).task
    assert family.tasks == ("flow", "vae") and task.primary_metric == "val_loss" and not task.greater_is_better


@pytest.mark.parametrize(
    "sections, fragment",
    [
        ({"model": {"mi_blocks": [8, 9]}}, "`model.mi_blocks` out of range, got [8, 9]"),
        ({"model": {"mi_blocks": [1, 1]}}, "`model.mi_blocks` lists a block twice"),
        ({"lora": {"target_blocks": [0, 5]}}, "`lora.target_blocks` out of range, got [0, 5]"),
        ({"model": {"num_instances_per_batch": 0}}, "`model.num_instances_per_batch`"),
        ({"model": {"task": "semseg"}}, "`model.task` is not a midi task, got 'semseg'. Use one of `flow`, `vae`."),
        ({"model": {"task": "vae"}}, "`lora.method` must be `full` for `model.task: vae`"),
        ({"model": {"task": "vae"}, "lora": {"method": "full"}}, "`data.root` must be empty for `model.task: vae`"),
        ({"lora": {"target_modules": ["qkv"]}}, "`lora.target_modules` for the DiT must be a subset"),
        ({"model": {"num_tokn": 3}}, "Did you mean `model.num_tokens`?"),
    ],
)
def test_check_profile_names_key_value_and_fix(midi_env, tmp_path, sections, fragment):
    with pytest.raises(ProfileError) as info:
        resolve_recipe(midi_profile_dict(midi_env, tmp_path, **sections), source="p.yaml")
    assert fragment in str(info.value)
    assert str(info.value).startswith("p.yaml: ")


def test_default_mi_blocks_follow_the_model_depth():
    assert resolve_mi_blocks(None, 21) == [8, 9, 10, 11, 12]
    assert resolve_mi_blocks(None, 3) == [1]
    assert resolve_mi_blocks([], 21) == []


def test_build_model_freezes_everything_and_lora_targets_the_chosen_blocks(midi_env, tmp_path):
    profile = midi_profile(midi_env, tmp_path, lora={"target_blocks": [1, 2], "attention_kinds": ["self"]})
    family = MidiFamily()
    model = family.build_model(profile)
    assert model.multi_instance_blocks == [1]
    assert not any(p.requires_grad for p in model.parameters())
    model = apply_lora_spec(model, profile.lora)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[1] for n in trainable} == {"1", "2"}
    assert all(".attn1." in n for n in trainable)
    assert "midi_frozen" not in "".join(model.state_dict())


def test_clip_cross_attention_query_is_not_adapted_because_it_cannot_learn(midi_env, tmp_path, one_thread):
    profile = midi_profile(midi_env, tmp_path)
    family = MidiFamily()
    model = apply_lora_spec(family.build_model(profile), profile.lora)
    adapted = model.lora3d_targets["default"]["modules"]
    assert "blocks.0.attn2.to_k" in adapted and "blocks.0.attn2_2.to_q" in adapted
    assert not any(n.endswith("attn2.to_q") for n in adapted)
    assert model.lora3d_targets["default"]["skipped"] == [f"blocks.{i}.attn2.to_q" for i in range(3)]
    # why: with one key token the query does not change the output at all
    attn = model.blocks[0].attn2
    x, c = torch.randn(2, 5, 32), torch.randn(2, 1, 16)
    with torch.no_grad():
        before = attn(x, c)
        attn.to_q.weight.add_(torch.randn_like(attn.to_q.weight))
        after = attn(x, c)
    torch.testing.assert_close(before, after)
    with pytest.raises(ProfileError, match="nothing left to adapt"):
        only_q = midi_profile(midi_env, tmp_path, lora={"target_modules": ["to_q"], "attention_kinds": ["cross"]})
        apply_lora_spec(family.build_model(only_q), only_q.lora)
