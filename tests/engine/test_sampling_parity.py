"""Whole renders against the public MultiTalk reference's own `generate()` loop, with toy networks.

The fixtures in fixtures/sampling/{clip_*,streaming_*} were made by running the reference pipeline
(c1ad840) on CPU in float32 with the toy velocity field and toy VAE below standing in for the DiT
and the VAE (see fixtures/sampling/README.md). Here the same toys drive our sampler, guidance and
streaming helpers, chained the way the render stage chains them, and every chunk's final latent,
every step's model input and the streamed video must match.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from engine.guidance import Guidance, GuidanceConfig, branch_conditions
from engine.sampling import FlowMatchEulerScheduler, initial_noise, make_generator, sample_chunk
from engine.streaming import chunk_audio, match_colors, plan_chunks, trim_to_audio

FIXTURES = Path(__file__).parent / "fixtures" / "sampling"
TOLERANCE = 1e-5
LATENT_CHANNELS = 16


def toy_velocity(latent, t, context, audio):
    """A velocity field that depends on every input the guidance branches vary (text and audio)."""
    s = t.float() / 1000.0
    text = context.float().mean(dim=0)[:16].view(16, 1, 1, 1)
    drive = audio.float().mean(dim=(2, 3, 4)).sum(dim=0)[::4].view(1, -1, 1, 1)
    return torch.tanh(latent) * (1 - s) + 0.5 * latent * s + 0.3 * text + 0.2 * drive + 0.1 * latent.roll(1, dims=2)


ENC = torch.linspace(-1.0, 1.0, 48).view(16, 3)
DEC = torch.linspace(-0.8, 0.9, 48).view(3, 16)


def toy_vae_encode(video):  # [3, F, H, W] -> [16, T, H/8, W/8]
    c, f, h, w = video.shape
    frames = torch.cat([video[:, :1], video[:, 1:].reshape(c, (f - 1) // 4, 4, h, w).mean(2)], dim=1)
    pooled = F.avg_pool2d(frames, 8)
    return torch.tanh(torch.einsum("oc,cthw->othw", ENC, pooled) + 0.1)


def toy_vae_decode(latent):  # [16, T, h, w] -> [3, 1 + 4(T-1), 8h, 8w]
    x = torch.einsum("co,othw->cthw", DEC, latent)
    x = torch.cat([x[:, :1], x[:, 1:].repeat_interleave(4, dim=1)], dim=1)
    x = x.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
    return torch.tanh(x + torch.linspace(-0.3, 0.3, x.shape[-1]))


class RecordingToyModel:
    """The sampler's model: records each call so step inputs can be compared with the reference's."""

    def __init__(self):
        self.calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def __call__(self, latent, t, *, branch, text_states, audio):
        self.calls.append((branch, latent.clone(), t.clone()))
        return toy_velocity(latent, t, text_states, audio)


def render(fx: dict[str, torch.Tensor], meta: dict[str, str], model: RecordingToyModel):
    """The render stage's chunk loop, reduced to our helpers plus the toy VAE."""
    tracks = [fx[k] for k in ("track1", "track2") if k in fx]
    config = GuidanceConfig(
        text_scale=float(meta["text_scale"]),
        audio_scale=float(meta["audio_scale"]),
        use_apg=meta["use_apg"] == "True",
        apg_norm_threshold=float(meta["apg_norm_threshold"]),
    )
    plan = plan_chunks([len(t) for t in tracks], max_frames=int(meta["max_frames"]))
    scheduler = FlowMatchEulerScheduler(int(meta["steps"]), float(meta["shift"]))
    generator = make_generator(int(meta["seed"]), "cpu")
    strength = float(meta["color_correction_strength"])
    cond_frames = fx["cond_image"][:, None]  # [3, 1, H, W]
    height, width = cond_frames.shape[-2:]
    latents, pieces = [], []
    for chunk in plan.chunks:
        zeros = cond_frames.new_zeros(3, chunk.frame_num - cond_frames.shape[1], height, width)
        padded = torch.cat([cond_frames, zeros], dim=1)  # conditioning frames, then mid-grey
        cond_latent = toy_vae_encode(padded)
        motion = cond_latent[:, : chunk.num_motion_latents] if chunk.index > 0 else None
        cond = {"text_states": fx["context"], "audio": chunk_audio(tracks, chunk, plan)}
        conditions = branch_conditions(config, cond, negative_text=fx["context_null"])
        shape = (LATENT_CHANNELS, cond_latent.shape[1], height // 8, width // 8)
        latent = sample_chunk(
            model, initial_noise(shape, generator), scheduler, Guidance(config), conditions,
            generator=generator, motion_latents=motion,
        )
        latents.append(latent)
        video = match_colors(toy_vae_decode(latent), fx["cond_image"], strength)
        pieces.append(video[:, chunk.new_frames])
        cond_frames = video[:, -plan.motion_frames :]
    return torch.stack(latents), trim_to_audio(torch.cat(pieces, dim=1), plan)


def load_render_fixture(name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(FIXTURES / f"{name}.safetensors", "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.mark.parametrize("name", ["clip_3pass", "clip_2pass_apg", "clip_3pass_apg", "streaming_2chunk"])
def test_render_matches_reference_generate(name, relative_error):
    fx, meta = load_render_fixture(name)
    model = RecordingToyModel()
    chunk_latents, video = render(fx, meta, model)

    # Every model call, in order: the reference evaluates cond, drop_text, uncond (or cond, drop_audio).
    expected_branches = ["cond", "drop_audio"] if meta["text_scale"] == "1.0" else ["cond", "drop_text", "uncond"]
    assert [branch for branch, _, _ in model.calls] == expected_branches * (len(model.calls) // len(expected_branches))
    assert torch.equal(torch.cat([t for _, _, t in model.calls]), fx["step_timesteps"])
    assert relative_error(torch.stack([latent for _, latent, _ in model.calls]), fx["step_latents"]) <= TOLERANCE
    assert chunk_latents.shape == fx["chunk_latents"].shape
    assert relative_error(chunk_latents, fx["chunk_latents"]) <= TOLERANCE
    assert video.shape[1] == int(meta["video_frames"])
    if "video" in fx:  # streaming: the concatenated, colour-corrected, trimmed video
        assert relative_error(video, fx["video"]) <= TOLERANCE


def test_same_seed_renders_the_same_video():
    fx, _ = load_render_fixture("streaming_2chunk")
    meta = {"text_scale": "5.0", "audio_scale": "4.0", "use_apg": "True", "apg_norm_threshold": "55.0",
            "max_frames": "1000", "steps": "2", "shift": "7.0", "seed": "11", "color_correction_strength": "1.0"}
    first = render(fx, meta, RecordingToyModel())
    second = render(fx, meta, RecordingToyModel())
    other_seed = render(fx, {**meta, "seed": "12"}, RecordingToyModel())
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.allclose(first[0], other_seed[0])
