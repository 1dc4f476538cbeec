"""Provides the rectified-flow scheduler of TripoSG / MIDI-3D, its training helpers and a CFG sampling loop.

NOTE: sign convention shared by training and sampling (and opposite to diffusers' FlowMatchEuler):
x_sigma = (1 - sigma) x0 + sigma noise, the model predicts v = x0 - noise, and one Euler step from sigma_i
to sigma_{i+1} < sigma_i is x += (sigma_i - sigma_{i+1}) v. Timesteps given to the DiT are t = 1000 sigma.
Source: VAST-AI-Research/TripoSG@fc5c409:triposg/schedulers/scheduling_rectified_flow.py
(reference/midi.md section 3.2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

__all__ = [
    "RectifiedFlowScheduler",
    "RectifiedFlowSchedulerOutput",
    "add_noise",
    "flow_target",
    "sample_logit_normal_sigmas",
]

# Keeps logit-normal sigmas strictly inside (0, 1) in float32 (sigmoid saturates to exactly 1.0 near 17).
_SIGMA_EPS = 1e-6


def sample_logit_normal_sigmas(
    batch_size: int,
    mean: float = 0.0,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:  # (batch_size,) float32 in (0, 1)
    """Draws training noise levels sigma = sigmoid(N(mean, std)) (SD3's logit-normal; MIDI's default).

    Args:
        batch_size: Number of sigmas.
        mean: Mean of the normal before the sigmoid.
        std: Standard deviation of the normal before the sigmoid.
        generator: RNG; draws happen on the generator's device, then move to `device`.
        device: Where the result goes.
    """
    gen_device = generator.device if generator is not None else "cpu"
    u = torch.randn(batch_size, generator=generator, device=gen_device, dtype=torch.float32)
    sigmas = torch.sigmoid(u * std + mean).clamp(_SIGMA_EPS, 1.0 - _SIGMA_EPS)
    return sigmas.to(device) if device is not None else sigmas


def _broadcast(sigma: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    return sigma.reshape(sigma.shape + (1,) * (like.ndim - sigma.ndim))


def add_noise(
    x0: torch.Tensor,  # (B, ...) clean latents
    noise: torch.Tensor,  # (B, ...) standard normal
    sigma: torch.Tensor | float,  # (B,) or scalar, in [0, 1]
) -> torch.Tensor:  # (B, ...)
    """Returns x_sigma = (1 - sigma) x0 + sigma noise."""
    s = _broadcast(sigma, x0)
    return (1.0 - s) * x0 + s * noise


def flow_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Returns the velocity the DiT is trained to predict, x0 - noise (TripoSG's sign, "-v" in PartCrafter)."""
    return x0 - noise


@dataclass
class RectifiedFlowSchedulerOutput(BaseOutput):
    """Output of `RectifiedFlowScheduler.step`.

    Attributes:
        prev_sample: The sample at the next (lower) noise level, same shape as the input sample.
    """

    prev_sample: torch.Tensor


class RectifiedFlowScheduler(SchedulerMixin, ConfigMixin):
    """Euler integrator of the rectified flow from noise (sigma = 1) to data (sigma = 0).

    Config keys equal TripoSG's `scheduler/scheduler_config.json`, so `from_pretrained(folder,
    subfolder="scheduler")` loads the hub folder.

    Args:
        num_train_timesteps: t = num_train_timesteps * sigma.
        shift: Static shift sigma -> shift sigma / (1 + (shift - 1) sigma); 1 is the identity (TripoSG).
        use_dynamic_shifting: Use the resolution-dependent shift with `mu` given to `set_timesteps`.
    """

    config_name = "scheduler_config.json"
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
    ) -> None:
        self.timesteps = torch.empty(0)
        self.sigmas = torch.empty(0)
        self.num_inference_steps: int | None = None
        self._step_index: int | None = None

    @property
    def step_index(self) -> int | None:
        """Index of the next step, or None before the first `step` after `set_timesteps`."""
        return self._step_index

    def _shift(self, sigmas: torch.Tensor, mu: float | None) -> torch.Tensor:
        if self.config.use_dynamic_shifting:
            if mu is None:
                raise ValueError("use_dynamic_shifting is on: pass `mu` to set_timesteps")
            return math.exp(mu) / (math.exp(mu) + (1.0 / sigmas - 1.0))
        shift = self.config.shift
        return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)

    def set_timesteps(
        self,
        num_inference_steps: int,
        device: torch.device | str | None = None,
        mu: float | None = None,
    ) -> None:
        """Sets sigma_i = shift(1 - i / n), i = 0..n-1, timesteps 1000 sigma_i, and appends sigma_n = 0."""
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps!r}")
        steps = torch.arange(num_inference_steps, dtype=torch.float64)
        sigmas = self._shift(1.0 - steps / num_inference_steps, mu).to(torch.float32)
        self.timesteps = (sigmas * self.config.num_train_timesteps).to(device)
        self.sigmas = torch.cat([sigmas, torch.zeros(1)]).to(device)
        self.num_inference_steps = num_inference_steps
        self._step_index = None

    def _index_for_timestep(self, timestep: torch.Tensor | float) -> int:
        t = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1)[0].to(self.timesteps.device)
        return int(torch.argmin((self.timesteps - t).abs()).item())

    def step(
        self,
        model_output: torch.Tensor,  # (B, ...) predicted x0 - noise
        timestep: torch.Tensor | float,  # one of self.timesteps
        sample: torch.Tensor,  # (B, ...) x at the current sigma
        return_dict: bool = True,
    ) -> RectifiedFlowSchedulerOutput | tuple[torch.Tensor]:
        """Moves `sample` from sigma_i to sigma_{i+1}: x + (sigma_i - sigma_{i+1}) * model_output.

        The step index is found from `timestep` on the first call after `set_timesteps`, then counted.
        """
        if self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps before step")
        if self._step_index is None:
            self._step_index = self._index_for_timestep(timestep)
        sigma = self.sigmas[self._step_index]
        sigma_next = self.sigmas[self._step_index + 1]
        prev = sample.to(torch.float32) + (sigma - sigma_next).to(sample.device) * model_output.to(torch.float32)
        prev = prev.to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev,)
        return RectifiedFlowSchedulerOutput(prev_sample=prev)

    def scale_noise(
        self,
        original_samples: torch.Tensor,  # (B, ...)
        noise: torch.Tensor,  # (B, ...)
        timesteps: torch.Tensor,  # (B,) in [0, num_train_timesteps]
    ) -> torch.Tensor:
        """diffusers-style name for `add_noise` with timesteps instead of sigmas."""
        return add_noise(original_samples, noise, timesteps.to(torch.float32) / self.config.num_train_timesteps)

    def sample(
        self,
        model_fn: Callable[..., torch.Tensor],
        shape: tuple[int, ...],
        num_steps: int = 50,
        guidance_scale: float = 7.0,
        cond: Mapping[str, torch.Tensor] | None = None,
        uncond: Mapping[str, torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:  # `shape`
        """Integrates noise to data with optional classifier-free guidance.

        `model_fn(x, t, **kwargs)` gets x (B', ...) and t (B',) = 1000 sigma and returns the velocity. With
        `guidance_scale > 1` each call stacks the unconditional batch first, then the conditional one (as
        MIDI-3D does, so a multi-instance batch `(b ni)` keeps the two halves in separate groups), and the
        velocity is v_u + g (v_c - v_u). `uncond` defaults to zeros like `cond` (TripoSG and MIDI).

        Args:
            model_fn: The velocity model, e.g. `lambda x, t, **c: dit(x, t, **c).sample`.
            shape: Latent shape (B, N, C).
            num_steps: Euler steps.
            guidance_scale: CFG scale; <= 1 runs the conditional model alone.
            cond: Keyword tensors for the model, each with batch size B.
            uncond: Unconditional counterparts of `cond`.
            generator: RNG for the initial noise.
            device: Device of the latents.
            dtype: Dtype of the latents.
            latents: Initial noise instead of drawing it.
        """
        cond = dict(cond or {})
        use_cfg = guidance_scale > 1.0
        if use_cfg:
            uncond = dict(uncond) if uncond is not None else {k: torch.zeros_like(v) for k, v in cond.items()}
            if set(uncond) != set(cond):
                raise ValueError(f"uncond keys {sorted(uncond)} differ from cond keys {sorted(cond)}")
            stacked = {k: torch.cat([uncond[k], cond[k]], dim=0) for k in cond}
        if latents is None:
            gen_device = generator.device if generator is not None else device
            latents = torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)
        self.set_timesteps(num_steps, device=latents.device)
        for t in self.timesteps:
            if use_cfg:
                x_in = torch.cat([latents, latents], dim=0)
                v_uncond, v_cond = model_fn(x_in, t.expand(x_in.shape[0]), **stacked).chunk(2, dim=0)
                velocity = v_uncond + guidance_scale * (v_cond - v_uncond)
            else:
                velocity = model_fn(latents, t.expand(latents.shape[0]), **cond)
            latents = self.step(velocity, t, latents, return_dict=False)[0]
        return latents
