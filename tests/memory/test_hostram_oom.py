"""Host-RAM estimate and warnings; the out-of-memory levers message with an estimate per lever."""

from __future__ import annotations

import re

from engine.memory.hostram import check_host_ram, estimate_host_ram
from engine.memory.oom import levers_message
from engine.memory.plan import fake_hardware
from tests.memory.profiles import midi_profile, scenesplat_profile


def test_workers_and_batch_raise_the_host_estimate():
    few = estimate_host_ram(scenesplat_profile(100_000, data={"num_workers": 0}), device="cuda")
    many = estimate_host_ram(scenesplat_profile(100_000, data={"num_workers": 8}), device="cuda")
    assert many.breakdown["workers"] == 8 * 300 * 1024**2 and few.breakdown["workers"] == 0
    assert many.breakdown["data_loader"] == 8 * few.breakdown["data_loader"] > 0
    assert many.total_bytes > few.total_bytes


def test_cpu_training_counts_the_training_estimate_on_the_host():
    gpu = estimate_host_ram(midi_profile(), device="cuda")
    cpu = estimate_host_ram(midi_profile(), device="cpu")
    assert gpu.breakdown["training"] == 0 and cpu.breakdown["training"] > 0
    assert cpu.breakdown["weights_loading"] == 0 < gpu.breakdown["weights_loading"]


def test_midi_latent_cache_size_is_reported():
    est = estimate_host_ram(midi_profile(1024, 4), device="cuda")
    # 12 synthetic scenes x 4 instances x (mean + log-variance) of 1024 x 64 fp32.
    assert est.cache_bytes == 12 * 4 * 2 * 4 * 64 * 1024 and est.cache_dir is not None


def test_check_host_ram_warns_with_a_fix_only_when_short():
    profile = scenesplat_profile(192_000, data={"num_workers": 16}, train={"batch_size": 8, "grad_accum": 1})
    assert check_host_ram(profile, fake_hardware(24, host_ram_gb=512)) == []
    warnings = check_host_ram(profile, fake_hardware(24, host_ram_gb=4))
    assert len(warnings) == 1
    assert warnings[0].startswith("host RAM: this run needs about") and "`data.num_workers`" in warnings[0]
    assert "of the 4.0 GB here" in warnings[0]


def _estimates(message: str) -> list[float]:
    return [float(x) for x in re.findall(r"estimated peak (\d+\.\d+) GB", message)]


def test_levers_in_order_each_with_a_lower_estimate():
    profile = scenesplat_profile(100_000, lora={"r": 16}, train={"batch_size": 1, "grad_accum": 1})
    message = levers_message(profile)
    order = ["`train.gradient_checkpointing=true`", "`lora.r=8`", "`train.mixed_precision=bf16`",
             "`data.point_budget=50000`"]
    positions = [message.index(item) for item in order]
    assert positions == sorted(positions)
    peaks = _estimates(message)
    assert len(peaks) == 4 and peaks == sorted(peaks, reverse=True) and peaks[-1] < peaks[0]
    assert "does not fit even at micro-batch 1" in message


def test_levers_skip_what_is_already_pulled_and_name_midi_instances():
    profile = midi_profile(2048, 8, lora={"r": 4}, train={"batch_size": 1, "grad_accum": 1,
                                                          "gradient_checkpointing": True, "mixed_precision": "bf16"})
    message = levers_message(profile)
    assert "gradient_checkpointing" not in message and "lora.r=" not in message and "mixed_precision" not in message
    assert "1. half the instances per scene: `model.num_instances_per_batch=4`" in message
    assert len(_estimates(message)) == 1
