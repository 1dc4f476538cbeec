"""Tests the MIDI latent cache: hits skip the VAE, every key ingredient invalidates, cached sampling is exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from midi_helpers import midi_env_fixture, midi_profile, one_thread_fixture  # noqa: F401

from engine.families.midi.data import MidiSceneDataset, collate_scenes
from engine.families.midi.family import MidiFamily
from engine.families.midi.latents import QUERY_SEED, sample_posterior, scene_surfaces
from engine.families.midi.scene_data import load_prepared_scene
from engine.families.midi.task import flow_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def _count_encodes(vae):
    calls = {"n": 0}
    original = vae.encode

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    vae.encode = counting
    return calls


def _dataset(family, profile, folders, **kwargs):
    frozen = family.load_frozen(profile)
    options = {"slots": profile.profile.model.num_instances_per_batch, "seed": 0, "frozen": frozen,
               "cache_dir": profile.options.cache_dir, "num_tokens": profile.profile.model.num_tokens,
               "num_samples": profile.profile.data.num_samples}
    options.update(kwargs)
    return MidiSceneDataset(folders, **options)


def test_second_epoch_and_second_build_do_not_call_the_vae(midi_env, tmp_path):
    profile = midi_profile(midi_env, tmp_path)
    family = MidiFamily()
    calls = _count_encodes(family.load_frozen(profile).vae)
    first = _dataset(family, profile, midi_env["train"])
    assert calls["n"] == len(midi_env["train"])  # one VAE call per scene, all instances at once
    assert first.posteriors.encoded == sum(load_prepared_scene(f).num_instances for f in midi_env["train"])
    for epoch in (0, 1):
        first.set_epoch(epoch)
        batch = collate_scenes([first[i] for i in range(len(first))])
        assert "latent_mean" in batch and "surface" not in batch
    again = _dataset(family, profile, midi_env["train"])
    assert calls["n"] == len(midi_env["train"]) and again.posteriors.encoded == 0
    assert again.conditions.encoded == 0


@pytest.mark.parametrize("change", ["num_samples", "num_tokens", "vae_weights", "surface_file"])
def test_cache_is_invalidated_by_each_key_ingredient(midi_env, tmp_path, change):
    scenes = [midi_env["train"][0]]
    if change == "surface_file":  # a private copy, so the shared data stays untouched
        import shutil

        shutil.copytree(scenes[0], tmp_path / "scene")
        scenes = [tmp_path / "scene"]
    profile = midi_profile(midi_env, tmp_path)
    family = MidiFamily()
    frozen = family.load_frozen(profile)
    _dataset(family, profile, scenes)
    calls = _count_encodes(frozen.vae)
    kwargs = {}
    expected = load_prepared_scene(scenes[0]).num_instances
    if change == "num_samples":
        kwargs["num_samples"] = 128
    elif change == "num_tokens":
        kwargs["num_tokens"] = 8
    elif change == "vae_weights":
        with torch.no_grad():
            frozen.vae.quant.bias.add_(0.01)
    else:
        scene = load_prepared_scene(scenes[0])
        entry = scene.manifest["instances"][0]
        np.savez(scenes[0] / entry["file"], surface_points=scene.surface_points[0][::-1].copy(),
                 surface_normals=scene.surface_normals[0][::-1].copy())
        expected = 1  # only the rewritten instance
    dataset = _dataset(family, profile, scenes, **kwargs)
    assert calls["n"] == 1 and dataset.posteriors.encoded == expected
    unchanged = _dataset(family, profile, scenes, **kwargs)
    assert unchanged.posteriors.encoded == 0


def test_cached_sample_equals_on_the_fly_sample_with_the_same_eps(midi_env, tmp_path):
    profile = midi_profile(midi_env, tmp_path)
    family = MidiFamily()
    frozen = family.load_frozen(profile)
    dataset = _dataset(family, profile, midi_env["train"][:1])
    scene = load_prepared_scene(dataset.scenes[0].folder)
    mean, logvar = dataset.posteriors.load(scene, list(range(scene.num_instances)))
    surfaces = scene_surfaces(scene, None)
    torch.manual_seed(5)
    cached = sample_posterior(mean, logvar)
    torch.manual_seed(5)
    with torch.no_grad():
        fly = frozen.vae.encode(surfaces, num_tokens=profile.profile.model.num_tokens, seed=QUERY_SEED).latent_dist.sample()
    torch.testing.assert_close(cached, fly, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(cached, mean)  # the posterior really is sampled


def test_training_loss_with_cache_equals_loss_without(midi_env, tmp_path):
    cached_profile = midi_profile(midi_env, tmp_path)
    fly_profile = midi_profile(midi_env, tmp_path, data={"enable_latent_cache": False})
    family = MidiFamily()
    model = family.build_model(cached_profile)
    cached_ds, _ = family.build_datasets(cached_profile)
    fly_ds, _ = family.build_datasets(fly_profile)
    assert fly_ds.posteriors is None
    cached = collate_scenes([cached_ds[0], cached_ds[1]])
    fly = collate_scenes([fly_ds[0], fly_ds[1]])
    assert "surface" in fly and "instance_images" in fly
    frozen = family.load_frozen(cached_profile)
    before = frozen.calls["vae"]
    losses = []
    for batch in (cached, fly):
        torch.manual_seed(11)
        loss, _ = flow_loss(model, batch, 16, cfg_dropout=0.3, logit_mean=0.0, logit_std=1.0)
        losses.append(loss)
    assert frozen.calls["vae"] == before + 1  # only the uncached batch ran the VAE
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=1e-5)
