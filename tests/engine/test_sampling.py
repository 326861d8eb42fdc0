"""The flow-matching scheduler, seeds and the chunk sampling loop (spec §5.1, §5.7, §6.2)."""

from __future__ import annotations

import math

import pytest
import torch

from engine.guidance import Guidance, GuidanceConfig
from engine.sampling import (
    MAX_RANDOM_SEED,
    FlowMatchEulerScheduler,
    RenderCancelled,
    default_shift,
    initial_noise,
    make_generator,
    resolve_seed,
    sample_chunk,
    shifted_timesteps,
)

SHAPE = (16, 5, 2, 3)  # [C, T, h, w]


@pytest.mark.parametrize("steps,shift", [(40, 7.0), (40, 11.0), (8, 2.0), (4, 2.0), (10, 7.0), (1, 7.0)])
def test_schedule_is_bit_identical_to_reference(steps, shift, load_fixture):
    expected = load_fixture("sampling/schedules")[f"steps{steps}_shift{shift:g}"]
    assert torch.equal(shifted_timesteps(steps, shift), expected)


def test_schedule_matches_the_spec_examples():
    eight = shifted_timesteps(8, 2.0)
    torch.testing.assert_close(
        eight, torch.tensor([1000, 923.16, 833.53, 727.62, 600.56, 445.31, 251.31, 2.0, 0]), atol=0.01, rtol=0
    )
    for shift in (7.0, 11.0, 2.0):
        last_call = shifted_timesteps(40, shift)[-2].item()
        assert last_call == pytest.approx(shift / (1 + (shift - 1) / 1000), rel=1e-6)  # not 0, not exactly shift
    assert shifted_timesteps(40, 7.0)[-1].item() == 0.0


def test_default_shift_per_size_bucket():
    assert default_shift("480p") == 7.0
    assert default_shift("720p") == 11.0
    with pytest.raises(ValueError, match="1080p"):
        default_shift("1080p")


def test_scheduler_rejects_impossible_settings():
    with pytest.raises(ValueError):
        FlowMatchEulerScheduler(0, 7.0)
    with pytest.raises(ValueError):
        FlowMatchEulerScheduler(4, 0.0)


def test_euler_steps_along_the_straight_path_land_on_the_clean_latent():
    """With the exact flow velocity (noise - x0) the Euler integrator is exact: the sign and dt are right."""
    generator = make_generator(0, "cpu")
    clean, noise = torch.randn(SHAPE, generator=generator), torch.randn(SHAPE, generator=generator)
    scheduler = FlowMatchEulerScheduler(10, 7.0)
    latent = scheduler.add_noise(clean, noise, 0)
    torch.testing.assert_close(latent, noise)  # t = 1000 is pure noise
    for i in range(scheduler.num_steps):
        latent = scheduler.step(noise - clean, i, latent)
        torch.testing.assert_close(latent, scheduler.add_noise(clean, noise, i + 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(latent, clean, atol=1e-5, rtol=1e-5)


def test_generator_reproduces_the_reference_global_seeding():
    torch.manual_seed(42)
    reference = torch.randn(SHAPE)
    assert torch.equal(initial_noise(SHAPE, make_generator(42, "cpu")), reference)


def test_resolve_seed_keeps_a_given_seed_and_draws_one_otherwise():
    assert resolve_seed(7) == 7
    assert resolve_seed(0) == 0
    for seed in (None, -1):
        drawn = resolve_seed(seed)
        assert 0 <= drawn <= MAX_RANDOM_SEED


class LinearToy:
    """v = a·x + b per branch: cheap, deterministic, and branch-dependent."""

    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, latent, t, *, branch, bias):
        self.calls.append(branch)
        return 0.3 * latent + bias * (t / 1000)


def _conditions():
    return {"cond": {"bias": 1.0}, "drop_text": {"bias": 0.5}, "uncond": {"bias": -0.25}}


def test_progress_is_reported_after_every_step():
    seen = []
    sample_chunk(
        LinearToy(), torch.zeros(SHAPE), FlowMatchEulerScheduler(4, 7.0), Guidance(GuidanceConfig()), _conditions(),
        generator=make_generator(0, "cpu"), on_step=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_cancel_stops_before_the_next_model_call():
    model = LinearToy()
    steps_done = []

    def is_cancel_requested() -> bool:
        return len(steps_done) == 2

    with pytest.raises(RenderCancelled) as raised:
        sample_chunk(
            model, torch.zeros(SHAPE), FlowMatchEulerScheduler(6, 7.0), Guidance(GuidanceConfig()), _conditions(),
            generator=make_generator(0, "cpu"), on_step=lambda done, total: steps_done.append(done),
            is_cancel_requested=is_cancel_requested,
        )
    assert raised.value.step == 2
    assert len(model.calls) == 2 * 3  # two full steps of three branches, nothing after
    assert "cancelled" in raised.value.user_message


def test_motion_frames_are_renoised_each_step_and_clean_at_the_end():
    """Spec §6.2: noise draws before step 0 and after each step, in that order; the last write is clean."""
    steps, seed = 3, 5
    scheduler = FlowMatchEulerScheduler(steps, 7.0)
    motion = torch.randn(16, 2, 2, 3, generator=torch.Generator().manual_seed(1))
    noise = initial_noise(SHAPE, make_generator(seed, "cpu"))
    noise_before = noise.clone()
    generator = make_generator(seed, "cpu")
    initial_noise(SHAPE, generator)  # the chunk's first draw, as the render stage makes it
    latent = sample_chunk(
        LinearToy(), noise, scheduler, Guidance(GuidanceConfig()), _conditions(),
        generator=generator, motion_latents=motion,
    )
    assert torch.equal(noise, noise_before)  # the caller's tensor is not written
    assert torch.equal(latent[:, :2], motion)  # t = 0: exactly the clean motion latents
    assert not torch.equal(latent[:, 2:], noise[:, 2:])

    replay = make_generator(seed, "cpu")
    initial_noise(SHAPE, replay)
    for _ in range(steps + 1):
        torch.randn(motion.shape, generator=replay)
    assert torch.equal(torch.randn(4, generator=replay), torch.randn(4, generator=generator))


def test_first_chunk_draws_no_motion_noise():
    generator = make_generator(9, "cpu")
    sample_chunk(
        LinearToy(), torch.zeros(SHAPE), FlowMatchEulerScheduler(3, 7.0), Guidance(GuidanceConfig()), _conditions(),
        generator=generator,
    )
    assert torch.equal(torch.randn(4, generator=generator), torch.randn(4, generator=make_generator(9, "cpu")))


def test_sampling_is_deterministic_for_a_seed():
    def run(seed: int) -> torch.Tensor:
        generator = make_generator(seed, "cpu")
        return sample_chunk(
            LinearToy(), initial_noise(SHAPE, generator), FlowMatchEulerScheduler(4, 7.0),
            Guidance(GuidanceConfig(use_apg=True)), _conditions(), generator=generator,
            motion_latents=torch.ones(16, 1, 2, 3),
        )

    assert torch.equal(run(3), run(3))
    assert not math.isclose((run(3) - run(4)).abs().sum().item(), 0.0)


def test_a_batched_latent_samples_like_an_unbatched_one():
    """The DiT takes [B, C, T, h, w]: motion injection must hit the time axis, not the channels."""
    motion = torch.randn(16, 2, 2, 3, generator=torch.Generator().manual_seed(2))

    def run(noise: torch.Tensor) -> torch.Tensor:
        return sample_chunk(
            LinearToy(), noise, FlowMatchEulerScheduler(3, 7.0), Guidance(GuidanceConfig(use_apg=True)),
            _conditions(), generator=make_generator(1, "cpu"), motion_latents=motion,
        )

    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(run(noise[None])[0], run(noise), rtol=1e-6, atol=1e-6)
