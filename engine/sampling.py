"""The flow-matching sampler of MultiTalk: shifted schedule, Euler steps, seeds, motion-frame injection.

Owns the numerics of spec §5.1 and §5.7 and the per-step motion-frame re-noising of §6.2. It knows
nothing about the DiT: the network is any callable `model(latent, t, *, branch, **conditioning)`
reached through `engine.guidance`, so the render stage can plug in the real DiT (with its TeaCache)
and tests can plug in a toy velocity field. No I/O, no global RNG: every random draw comes from the
`torch.Generator` the caller passes, in the reference's order.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from engine.guidance import Guidance, VelocityModel
from storage.errors import DuetError

NUM_TRAIN_TIMESTEPS = 1000
DEFAULT_STEPS = 40
# Shift per size bucket (spec §5.5). "720p" is the reference's multitalk-720 bucket.
DEFAULT_SHIFT = {"480p": 7.0, "720p": 11.0}
# The reference draws a random seed in this range when the caller passes a negative one.
MAX_RANDOM_SEED = 99_999_999

ProgressCallback = Callable[[int, int], None]  # (steps done, steps total)
CancelCheck = Callable[[], bool]


class RenderCancelled(DuetError):
    """The job's cancel flag was seen between two sampler steps; nothing after that step ran."""

    def __init__(self, step: int, total: int) -> None:
        super().__init__("The video was cancelled.", f"cancelled before sampler step {step + 1}/{total}")
        self.step = step


def default_shift(size: str) -> float:
    """The reference's `--sample_shift` default for a size bucket; an unknown bucket raises."""
    try:
        return DEFAULT_SHIFT[size]
    except KeyError:
        raise ValueError(f"unknown size bucket {size!r}; expected one of {sorted(DEFAULT_SHIFT)}") from None


def resolve_seed(seed: int | None) -> int:
    """A stored job seed: the given one, or a fresh one in the reference's range when absent or negative.

    Resolve once at submission (and store it) so that a retried job renders the same video.
    """
    if seed is None or seed < 0:
        return secrets.randbelow(MAX_RANDOM_SEED + 1)
    return seed


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A generator on `device` seeded like the reference's `torch.manual_seed(seed)`.

    A fresh generator seeded with s yields the same stream as the default generator of that device
    after `manual_seed(s)`, so on the same hardware our draws equal the reference's.
    """
    return torch.Generator(device=device).manual_seed(seed)


class FlowMatchEulerScheduler:
    """First-order Euler integration of the flow ODE on the reference's shifted grid (spec §5.1).

    `timesteps` holds steps+1 float32 values from 1000 down to exactly 0; the model is evaluated at
    the first `steps` of them (the last evaluation sits near `shift`, not at 0) and `step` moves
    the latent from `timesteps[i]` to `timesteps[i + 1]`.
    """

    def __init__(self, num_steps: int, shift: float, device: torch.device | str = "cpu") -> None:
        if num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {num_steps}")
        if shift <= 0:
            raise ValueError(f"shift must be positive, got {shift}")
        self.num_steps = num_steps
        self.shift = shift
        self.timesteps = shifted_timesteps(num_steps, shift).to(device)

    def step(self, velocity: torch.Tensor, step_index: int, latent: torch.Tensor) -> torch.Tensor:
        """x <- x - v * (t_i - t_{i+1}) / 1000, in float32 as the reference (velocity ~ noise - x0)."""
        dt = (self.timesteps[step_index] - self.timesteps[step_index + 1]) / NUM_TRAIN_TIMESTEPS
        return latent + (-velocity) * dt

    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, step_index: int) -> torch.Tensor:
        """The latent at `timesteps[step_index]` on the straight path x_t = (1 - t)x0 + t eps."""
        sigma = self.timesteps[step_index] / NUM_TRAIN_TIMESTEPS
        return (1 - sigma) * clean + sigma * noise


def shifted_timesteps(num_steps: int, shift: float) -> torch.Tensor:
    """`linspace(1000, 1, steps)` + [0], each shifted by t' = s·t / (1 + (s-1)·t) on t/1000; float32.

    The grid comes from numpy as in the reference (computed in float64, rounded to float32) so the
    timesteps, and the sinusoidal embedding fed from them, are bit-identical; the shift itself runs
    in float32 like the reference's tensor arithmetic.
    """
    grid = np.linspace(NUM_TRAIN_TIMESTEPS, 1, num_steps, dtype=np.float32)
    t = torch.from_numpy(np.append(grid, np.float32(0.0)))
    sigma = t / NUM_TRAIN_TIMESTEPS
    shifted = shift * sigma / (1 + (shift - 1) * sigma)
    return shifted * NUM_TRAIN_TIMESTEPS


def initial_noise(latent_shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """The chunk's starting latent: standard normal float32, the first draw of every chunk (§5.7)."""
    return torch.randn(latent_shape, generator=generator, device=generator.device, dtype=torch.float32)


def sample_chunk(
    model: VelocityModel,
    noise: torch.Tensor,
    scheduler: FlowMatchEulerScheduler,
    guidance: Guidance,
    conditions: Mapping[str, Mapping[str, Any]],
    *,
    generator: torch.Generator,
    motion_latents: torch.Tensor | None = None,
    on_step: ProgressCallback | None = None,
    is_cancel_requested: CancelCheck | None = None,
) -> torch.Tensor:
    """Denoise one chunk from `noise` ([C, T, h, w] or [B, C, T, h, w], float32) to its clean latent.

    `conditions` maps each of `guidance.branches` to the keyword arguments of that model call.
    `motion_latents` ([C, T_m, h, w], chunks after the first) are the clean latents of the motion
    frames: they are re-noised to the current timestep with fresh noise from `generator` and written
    over the first T_m latent frames before step 0 and after every step (spec §6.2), so after the
    last step they equal the clean latents. `guidance` carries the chunk's APG momentum: create a
    new one per chunk. The cancel check runs before each step; progress is reported after it.
    """
    latent = noise.clone()  # motion injection writes in place; the caller's noise stays intact
    if motion_latents is not None:
        latent = _inject_motion(latent, motion_latents, scheduler, 0, generator)
    for i in range(scheduler.num_steps):
        if is_cancel_requested is not None and is_cancel_requested():
            raise RenderCancelled(i, scheduler.num_steps)
        t = scheduler.timesteps[i : i + 1]  # [1]: one timestep shared by all tokens and branches
        velocity = guidance.velocity(model, latent, t, conditions)
        latent = scheduler.step(velocity, i, latent)
        if motion_latents is not None:
            latent = _inject_motion(latent, motion_latents, scheduler, i + 1, generator)
        if on_step is not None:
            on_step(i + 1, scheduler.num_steps)
    return latent


def _inject_motion(
    latent: torch.Tensor,
    motion_latents: torch.Tensor,
    scheduler: FlowMatchEulerScheduler,
    step_index: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Overwrite (in place) the leading latent frames with the motion latents noised to `timesteps[step_index]`."""
    clean = motion_latents.to(device=latent.device, dtype=latent.dtype)
    noise = torch.randn(clean.shape, generator=generator, device=generator.device, dtype=clean.dtype)
    latent[..., : clean.shape[-3], :, :] = scheduler.add_noise(clean, noise, step_index)  # time axis is -3
    return latent
