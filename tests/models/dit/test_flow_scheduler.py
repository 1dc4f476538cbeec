"""RectifiedFlowScheduler: schedule, step sign, training helpers consistent with sampling, CFG loop."""

from __future__ import annotations

import json

import pytest
import torch

from engine.models.dit import RectifiedFlowScheduler, add_noise, flow_target, sample_logit_normal_sigmas


def test_set_timesteps_is_linear_in_sigma_with_a_final_zero():
    scheduler = RectifiedFlowScheduler()
    scheduler.set_timesteps(4)
    torch.testing.assert_close(scheduler.timesteps, torch.tensor([1000.0, 750.0, 500.0, 250.0]))
    torch.testing.assert_close(scheduler.sigmas, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))


def test_shift_bends_the_schedule_towards_high_noise():
    scheduler = RectifiedFlowScheduler(shift=3.0)
    scheduler.set_timesteps(2)
    # sigma = 0.5 -> 3 * 0.5 / (1 + 2 * 0.5) = 0.75; the endpoints stay at 1 and 0
    torch.testing.assert_close(scheduler.sigmas, torch.tensor([1.0, 0.75, 0.0]))


def test_step_adds_the_velocity_times_the_sigma_decrease():
    scheduler = RectifiedFlowScheduler()
    scheduler.set_timesteps(4)
    x = torch.zeros(1, 3)
    x = scheduler.step(torch.ones(1, 3), scheduler.timesteps[0], x).prev_sample
    torch.testing.assert_close(x, torch.full((1, 3), 0.25))  # + (1.0 - 0.75) * v, not minus
    x = scheduler.step(torch.full((1, 3), 2.0), scheduler.timesteps[1], x, return_dict=False)[0]
    torch.testing.assert_close(x, torch.full((1, 3), 0.75))
    assert scheduler.step_index == 2


def test_one_step_with_the_training_target_lands_on_x0():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 7, 4, generator=g), torch.randn(2, 7, 4, generator=g)
    sigma = torch.tensor([0.3, 0.9])
    x_t = add_noise(x0, noise, sigma)
    torch.testing.assert_close(x_t[1], 0.1 * x0[1] + 0.9 * noise[1])
    # Euler from sigma to 0 along the target velocity: x_t + sigma * (x0 - noise) = x0
    torch.testing.assert_close(x_t + sigma[:, None, None] * flow_target(x0, noise), x0)
    scheduler = RectifiedFlowScheduler()
    scheduler.set_timesteps(1)
    out = scheduler.step(flow_target(x0, noise), scheduler.timesteps[0], noise).prev_sample
    torch.testing.assert_close(out, x0)
    torch.testing.assert_close(scheduler.scale_noise(x0, noise, sigma * 1000), x_t)


@pytest.mark.parametrize(("num_steps", "guidance_scale"), [(3, 1.0), (25, 7.0)])
def test_oracle_velocity_integrates_noise_back_to_x0(num_steps, guidance_scale):
    """For a single data point x0 the exact flow velocity at (x, sigma) is (x0 - x) / sigma = x0 - noise."""
    x0 = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(5))
    calls = []

    def oracle(x, t, cond):
        calls.append(t.shape[0])
        sigma = (t / 1000.0)[:, None, None]
        target = x0.repeat(x.shape[0] // x0.shape[0], 1, 1)
        return (target - x) / sigma

    cond = {"cond": torch.ones(2, 1, 3)}
    out = RectifiedFlowScheduler().sample(oracle, x0.shape, num_steps, guidance_scale, cond=cond,
                                          generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(out, x0, rtol=1e-5, atol=1e-5)
    assert calls == [4 if guidance_scale > 1 else 2] * num_steps


def test_cfg_stacks_zero_uncond_first_and_mixes_with_the_guidance_scale():
    cond = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(1))
    seen = []

    def model_fn(x, t, encoder_hidden_states):
        seen.append(encoder_hidden_states.clone())
        return encoder_hidden_states  # velocity = the condition itself

    init = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(2))
    out = RectifiedFlowScheduler().sample(model_fn, init.shape, num_steps=4, guidance_scale=3.0,
                                          cond={"encoder_hidden_states": cond}, latents=init)
    assert all(s.shape[0] == 4 for s in seen)
    torch.testing.assert_close(seen[0][:2], torch.zeros_like(cond))  # unconditional half first, zeros
    torch.testing.assert_close(seen[0][2:], cond)
    # v = 0 + 3 * (cond - 0) at every step, summed over sigma 1 -> 0
    torch.testing.assert_close(out, init + 3.0 * cond)


def test_sample_is_reproducible_from_the_generator():
    def model_fn(x, t):
        return -x

    def run() -> torch.Tensor:
        return RectifiedFlowScheduler().sample(model_fn, (1, 3, 2), 2, 1.0,
                                               generator=torch.Generator().manual_seed(4))

    torch.testing.assert_close(run(), run(), rtol=0, atol=0)


def test_logit_normal_sigmas_lie_in_open_unit_interval():
    sigmas = sample_logit_normal_sigmas(20000, generator=torch.Generator().manual_seed(0))
    assert sigmas.shape == (20000,) and sigmas.dtype == torch.float32
    assert bool(((sigmas > 0) & (sigmas < 1)).all())
    assert abs(sigmas.median().item() - 0.5) < 0.02  # sigmoid(0)
    shifted = sample_logit_normal_sigmas(20000, mean=2.0, generator=torch.Generator().manual_seed(0))
    assert abs(shifted.median().item() - torch.sigmoid(torch.tensor(2.0)).item()) < 0.02
    wide = sample_logit_normal_sigmas(1000, std=100.0, generator=torch.Generator().manual_seed(0))
    assert bool(((wide > 0) & (wide < 1)).all())
    again = sample_logit_normal_sigmas(20000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, sigmas, rtol=0, atol=0)


def test_scheduler_config_round_trip(tmp_path):
    RectifiedFlowScheduler(shift=3.0).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "scheduler_config.json").read_text())["shift"] == 3.0
    loaded = RectifiedFlowScheduler.from_pretrained(tmp_path)
    loaded.set_timesteps(2)
    torch.testing.assert_close(loaded.sigmas, torch.tensor([1.0, 0.75, 0.0]))


def test_step_before_set_timesteps_raises():
    with pytest.raises(RuntimeError, match="set_timesteps"):
        RectifiedFlowScheduler().step(torch.zeros(1), 1000.0, torch.zeros(1))
