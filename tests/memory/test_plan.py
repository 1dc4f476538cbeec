"""The joint recommendation on faked GPUs: follows the tiers, fits by its own estimate, keeps the effective batch."""

from __future__ import annotations

import time

import pytest

from engine.memory.estimate import GIB
from engine.memory.estimate import estimate_recipe as estimate_profile
from engine.memory.plan import fake_hardware
from engine.memory.plan import plan_recipe as plan_profile
from engine.memory.tiers import tier_for_memory
from tests.memory.profiles import midi_profile, scenesplat_profile


def _apply(recipe, rec):
    return recipe.with_overrides({"lora.r": rec.rank, "train.batch_size": rec.micro_batch,
                                  "train.grad_accum": rec.grad_accum,
                                  "train.gradient_checkpointing": rec.gradient_checkpointing,
                                  "train.mixed_precision": rec.precision})


PROFILES = {
    "ptv3-50k": lambda: scenesplat_profile(50_000, train={"batch_size": 4, "grad_accum": 2}),
    "ptv3-20k-3proc": lambda: scenesplat_profile(20_000, train={"batch_size": 2, "grad_accum": 3},
                                                 launch={"num_processes": 2}),
    "midi-2048x4": lambda: midi_profile(2048, 4, train={"batch_size": 8, "grad_accum": 1}),
    "midi-odd-batch": lambda: midi_profile(1024, 8, train={"batch_size": 3, "grad_accum": 5}),
}


@pytest.mark.parametrize("gb", [12, 16, 24, 80])
@pytest.mark.parametrize("name", sorted(PROFILES))
def test_recommendation_follows_tier_fits_and_keeps_effective_batch(name, gb):
    profile = PROFILES[name]()
    hardware = fake_hardware(gb)
    plan = plan_profile(profile, hardware)
    rec = plan.recommendation
    tier = tier_for_memory(hardware.gpus[0].total_bytes)
    assert rec.tier == tier.tier
    # Effective batch preserved in every recommendation.
    assert rec.micro_batch * rec.grad_accum * profile.profile.launch.num_processes == profile.profile.effective_batch
    # Never above the tier's rank and batch; the tier's checkpointing is kept when it asks for it.
    assert 4 <= rec.rank <= tier.rank
    assert rec.micro_batch <= tier.batch_size
    if tier.gradient_checkpointing:
        assert rec.gradient_checkpointing
    assert rec.precision == "bf16"
    # The recommendation's own estimate (also through the public estimate of the applied profile) fits.
    again = estimate_profile(_apply(profile, rec), device="cuda")
    assert again.estimate_bytes == rec.estimate_bytes
    assert rec.fits == (rec.estimate_bytes <= hardware.gpus[0].total_bytes)
    assert rec.fits
    assert plan.device_bytes == hardware.gpus[0].total_bytes
    assert plan.fits == (plan.estimate.estimate_bytes <= plan.device_bytes)
    assert rec.reasons and rec.reasons[0].startswith(f"start from the {tier.tier} tier")


def test_tiers_as_documented_for_a_small_model():
    profile = midi_profile(512, 2, train={"batch_size": 8, "grad_accum": 2})
    got = {gb: plan_profile(profile, fake_hardware(gb)).recommendation for gb in (12, 16, 24, 80)}
    assert (got[12].rank, got[12].micro_batch, got[12].gradient_checkpointing) == (8, 2, True)
    assert (got[16].rank, got[16].micro_batch, got[16].gradient_checkpointing) == (16, 4, False)
    assert (got[24].rank, got[24].micro_batch, got[24].gradient_checkpointing) == (32, 8, False)
    assert (got[80].rank, got[80].micro_batch) == (32, 16)  # 48 GB and more: batch 16
    assert [got[gb].grad_accum for gb in (12, 16, 24, 80)] == [8, 4, 2, 1]


def test_levers_are_pulled_in_order_when_the_tier_does_not_fit():
    # A full SceneSplat decoder at 150k points per scene does not fit 24 GB at batch 8 without help.
    profile = scenesplat_profile(150_000, train={"batch_size": 8, "grad_accum": 2})
    rec = plan_profile(profile, fake_hardware(24)).recommendation
    text = " | ".join(rec.reasons)
    assert rec.gradient_checkpointing and "gradient checkpointing on" in text
    assert rec.micro_batch < 8 and rec.micro_batch * rec.grad_accum == 16
    assert text.index("gradient checkpointing on") < text.index("micro-batch")
    assert rec.fits and rec.estimate_bytes <= 24 * GIB


def test_nothing_fits_says_so_and_names_the_per_sample_lever():
    profile = scenesplat_profile(192_000, train={"batch_size": 1, "grad_accum": 1})
    plan = plan_profile(profile, fake_hardware(4))
    assert not plan.fits and not plan.recommendation.fits
    assert plan.recommendation.rank == 4 and plan.recommendation.micro_batch == 1
    assert "`data.point_budget`" in plan.recommendation.reasons[-1]
    assert plan.warnings and "below the recommended 12 GB" in plan.warnings[0]


def test_cpu_plan_uses_host_ram():
    profile = midi_profile(512, 2, train={"device": "auto"})
    plan = plan_profile(profile, fake_hardware(0, host_ram_gb=16))
    data = plan.to_dict()
    assert data["device"] == "cpu" and data["device_bytes"] is None
    assert data["host_ram_bytes"] == 16 * GIB and 0 < data["budget_bytes"] < 16 * GIB
    assert data["recommendation"]["precision"] == "no" and data["tier"] == "cpu"


def test_plan_is_fast():
    for make in (lambda: scenesplat_profile(192_000), lambda: midi_profile(2048, 8)):
        profile = make()
        plan_profile(profile, fake_hardware(24))  # warm imports
        start = time.perf_counter()
        plan_profile(profile, fake_hardware(24))
        assert time.perf_counter() - start < 0.5
