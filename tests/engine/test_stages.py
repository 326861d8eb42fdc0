"""The render stages one by one, with the tiny preset's models: audio features, conditioning, the DiT adapter,
the chunk plan and the frame conversion."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from engine.cache import TeaCache
from engine.models.t5 import tokenize_prompts
from engine.models.wav2vec import video_frame_count
from engine.presets import load_models
from engine.stages.audio import END_TRIM_ROWS, encode_tracks, padded_length, target_frame_count
from engine.stages.conditioning import (
    DEFAULT_SCENE,
    NEGATIVE_PROMPT,
    CoverCrop,
    build_prompt,
    encode_image_condition,
    encode_prompts,
    fit_frame,
    frame_mask,
    region_masks,
)
from engine.stages.decode import to_uint8_frames
from engine.stages.render import DiTVelocity, RenderConfig, plan_render
from storage.contract import Box


@pytest.fixture(scope="module")
def models():
    return load_models("tiny")


# --- conditioning -------------------------------------------------------------------------------------------------


def test_cover_crop_reproduces_the_reference_rounding():
    """Spec §1.3's worked examples: the float64 ceil overshoots by a pixel, offsets round half to even."""
    multi3 = CoverCrop.of((1324, 2146), (768, 1216))
    assert multi3.resized == (769, 1245) and (multi3.top, multi3.left) == (0, 14)  # 14.5 -> 14
    single1 = CoverCrop.of((1318, 2366), (704, 1280))
    assert single1.resized[1] == 1281
    multi1 = CoverCrop.of((1440, 2560), (448, 896))
    assert multi1.resized == (504, 896) and (multi1.top, multi1.left) == (28, 0)
    assert CoverCrop.of((960, 960), (960, 960)) == CoverCrop((960, 960), 0, 0, (960, 960))


def test_fit_frame_maps_pixels_to_minus_one_one_and_keeps_an_exact_size_frame():
    pixels = np.zeros((32, 48, 4), dtype=np.uint8)  # RGBA: alpha is dropped, not composited
    pixels[..., 0], pixels[..., 3] = 255, 0
    pixels[:, 24:, 1] = 128
    frame = fit_frame(Image.fromarray(pixels, "RGBA"), (32, 48))
    assert frame.shape == (3, 32, 48) and frame.dtype == torch.float32
    assert torch.all(frame[0] == 1.0) and torch.all(frame[2] == -1.0)
    assert torch.all(frame[1, :, :24] == -1.0)
    assert torch.allclose(frame[1, :, 24:], torch.tensor(128 / 255 * 2 - 1), atol=1e-6)


def test_region_masks_put_rows_first_like_the_reference():
    """A box (x0, y0, x1, y1) covers rows y0..y1-1 and columns x0..x1-1; the reference lists it [y0, x0, y1, x1]."""
    wide_a = Box(x0=0, y0=80, x1=96, y1=96)  # a low, wide strip on the left half
    tall_b = Box(x0=160, y0=0, x1=176, y1=96)  # a narrow, full-height column on the right
    masks = region_masks((wide_a, tall_b), source=(96, 192), size=(96, 192), latent_size=(12, 24))
    assert masks.shape == (3, 12, 24)
    expected_a = torch.zeros(12, 24)
    expected_a[10:12, 0:12] = 1
    expected_b = torch.zeros(12, 24)
    expected_b[:, 20:22] = 1
    assert torch.equal(masks[0], expected_a)
    assert torch.equal(masks[1], expected_b)
    assert torch.equal(masks[2], 1 - torch.maximum(expected_a, expected_b))


def test_region_masks_follow_the_frame_through_resize_and_crop():
    # A 1440 x 2560 frame into 448 x 896: scaled by 0.35 to 504 x 896, 28 rows cropped at top and bottom.
    box_a = Box(x0=0, y0=0, x1=1280, y1=1440)
    box_b = Box(x0=1280, y0=0, x1=2560, y1=720)
    masks = region_masks((box_a, box_b), source=(1440, 2560), size=(448, 896), latent_size=(56, 112))
    assert masks[0, :, :56].all() and not masks[0, :, 56:].any()
    rows_b = masks[1, :, 60].nonzero().flatten()
    # Rows 0..719 scale to 0..251 of 504; after cropping 28, 224 of the 448 rows remain -> 28 latent rows.
    assert rows_b.tolist() == list(range(28))
    assert torch.equal(masks[2], 1 - masks[:2].amax(0))


def test_region_masks_default_to_the_reference_halves_without_boxes():
    masks = region_masks(None, source=(400, 800), size=(400, 800), latent_size=(50, 100))
    # rows [20, 380) -> latent rows 3..47 (nearest samples pixel 8r); person 1 columns [20, 380), person 2 [420, 780)
    assert masks[0, 25, 10] == 1 and masks[0, 25, 60] == 0 and masks[1, 25, 60] == 1
    assert masks[0, 1].sum() == 0 and masks[2, 1].all()
    with pytest.raises(ValueError, match="one box per speaker"):
        region_masks((Box(x0=0, y0=0, x1=8, y1=8),), source=(16, 16), size=(16, 16), latent_size=(2, 2))


def test_frame_mask_repeats_the_first_frame_into_latent_frame_zero():
    first = frame_mask(1, 81, (2, 3), time_stride=4)
    assert first.shape == (4, 21, 2, 3)
    assert first[:, 0].eq(1).all() and first[:, 1:].eq(0).all()
    motion = frame_mask(25, 81, (1, 1), time_stride=4)[..., 0, 0]  # [4, 21]
    pixel = torch.zeros(81)
    pixel[:25] = 1
    for j in range(1, 21):
        assert motion[:, j].tolist() == pixel[4 * j - 3 : 4 * j + 1].tolist()
    assert motion[:, :7].eq(1).all() and motion[:, 7:].eq(0).all()


def test_prompt_wraps_the_scene_in_a_two_person_conversation():
    prompt = build_prompt("  A sunny   beach at dusk ")
    assert prompt.startswith("A sunny beach at dusk. ")
    assert "conversation" in prompt and "person on the left" in prompt
    assert build_prompt("").startswith(DEFAULT_SCENE)
    assert build_prompt("在海边！").startswith("在海边！ ")
    assert NEGATIVE_PROMPT.startswith("bright tones, overexposed") and NEGATIVE_PROMPT.endswith("walking backwards")


def test_prompts_are_encoded_to_their_real_tokens(models):
    text = encode_prompts(models.t5, models.tokenizer, "hi", "a much longer negative prompt", device="cpu")
    assert text.prompt.shape == (1, 3, models.t5.config.dim)  # "h", "i", EOS
    assert text.negative.shape == (1, models.t5.config.text_len, models.t5.config.dim)  # truncated
    assert torch.isfinite(text.prompt).all()


def test_prompts_skip_the_padding_and_keep_the_padded_run_s_states(models, monkeypatch):
    seen = []
    forward = type(models.t5).forward
    monkeypatch.setattr(type(models.t5), "forward", lambda self, ids, mask: seen.append(ids.shape[1]) or forward(
        self, ids, mask))  # fmt: skip
    text = encode_prompts(models.t5, models.tokenizer, "hi there", "no", device="cpu")
    assert seen == [9, 3]  # the characters and EOS, not the text length
    ids, mask = tokenize_prompts(models.tokenizer, ["hi there"], models.t5.config.text_len)
    with torch.inference_mode():
        padded = forward(models.t5, ids, mask)[:, :9]
    torch.testing.assert_close(text.prompt, padded, rtol=0, atol=1e-6)


@pytest.mark.parametrize("num_cond", [1, 25])
def test_image_condition_of_a_chunk(models, num_cond):
    frames = torch.rand(3, num_cond, 32, 48) * 2 - 1
    condition = encode_image_condition(models.vae, models.clip, frames, frame_num=33, dtype=torch.float32)
    num_motion = 1 + (num_cond - 1) // 4
    assert condition.cond_latents.shape == (1, 20, 9, 4, 6)
    mask = condition.cond_latents[0, :4]
    assert mask[:, :num_motion].eq(1).all() and mask[:, num_motion:].eq(0).all()
    assert condition.motion_latents.shape == (16, num_motion, 4, 6)
    assert torch.equal(condition.motion_latents, condition.cond_latents[0, 4:, :num_motion])
    assert condition.image_states.shape == (1, models.clip.config.num_tokens, models.clip.config.dim)
    # CLIP sees the last conditioning frame only.
    changed = frames.clone()
    changed[:, :-1] = 0
    again = encode_image_condition(models.vae, models.clip, changed, frame_num=33, dtype=torch.float32)
    assert torch.equal(again.image_states, condition.image_states)


def test_image_condition_in_the_reference_precisions(models):
    """bf16 DiT inputs from an fp16 CLIP and an fp32 VAE; the motion latents are the bf16-rounded latents."""
    clip16 = copy.deepcopy(models.clip).half()
    frames = torch.rand(3, 25, 32, 48) * 2 - 1
    condition = encode_image_condition(models.vae, clip16, frames, frame_num=33, dtype=torch.bfloat16)
    assert condition.image_states.dtype == condition.cond_latents.dtype == torch.bfloat16
    assert condition.motion_latents.dtype == torch.float32
    assert torch.equal(condition.motion_latents, condition.cond_latents[0, 4:, :7].float())
    exact = encode_image_condition(models.vae, models.clip, frames, frame_num=33, dtype=torch.float32)
    assert not torch.equal(condition.motion_latents, exact.motion_latents)
    torch.testing.assert_close(condition.motion_latents, exact.motion_latents, rtol=1e-2, atol=1e-2)


# --- audio --------------------------------------------------------------------------------------------------------


def test_video_length_is_the_speech_length_in_whole_frames():
    assert target_frame_count(2.6) == 65
    assert target_frame_count(2.619) == 65 and target_frame_count(2.621) == 66
    assert target_frame_count(0.001) == 1


@pytest.mark.parametrize("num_frames", [1, 28, 65, 81, 82, 200, 977])
def test_padded_tracks_cover_the_video_and_the_reference_minimum(num_frames):
    for samples in (0, 16000, num_frames * 640):
        length = padded_length(samples, num_frames, frame_num=81)
        rows = video_frame_count(length)
        assert length >= samples
        assert rows > 81 and rows >= num_frames + END_TRIM_ROWS


def test_audio_features_per_speaker_at_25_fps(models):
    rng = np.random.default_rng(0)
    speech_a = np.concatenate([rng.normal(0, 0.1, 16000), np.zeros(24000)]).astype(np.float32)
    speech_b = np.concatenate([np.zeros(16000), rng.normal(0, 0.1, 24000)]).astype(np.float32)
    features = encode_tracks(
        [speech_a, speech_b], models.wav2vec, models.wav2vec_preprocessor, num_frames=100, frame_num=81
    )
    layers, width = models.wav2vec.config.num_hidden_layers, models.wav2vec.config.hidden_size
    assert features.num_frames == 100
    assert features.rows == (103, 103)  # 2.5 s of speech, padded to 100 frames + the 3 the plan trims
    assert all(track.shape == (103, layers, width) and track.dtype == torch.float32 for track in features.tracks)
    assert not torch.allclose(features.tracks[0], features.tracks[1])
    with pytest.raises(ValueError, match="16000 Hz"):
        encode_tracks([speech_a], models.wav2vec, models.wav2vec_preprocessor, num_frames=10, frame_num=81,
                      sample_rate=24000)  # fmt: skip


def test_short_speech_renders_one_chunk_and_long_speech_streams():
    config = RenderConfig(steps=1, shift=7.0, seed=0, size="480p")

    def features(num_frames, rows):
        from engine.stages.audio import AudioFeatures

        return AudioFeatures(tracks=(torch.zeros(rows, 1, 1),) * 2, num_frames=num_frames)

    clip = plan_render(features(65, 82), config)
    assert len(clip.chunks) == 1 and clip.num_frames == 81
    two = plan_render(features(100, 103), config)
    assert [chunk.start for chunk in two.chunks] == [0, 56] and two.num_frames == 100
    three = plan_render(features(150, 153), config)
    assert len(three.chunks) == 3 and three.num_frames == 150
    with pytest.raises(ValueError, match="cover"):
        plan_render(features(150, 120), config)


# --- the DiT adapter and frames -----------------------------------------------------------------------------------


def _dit_inputs(models):
    torch.manual_seed(0)
    config = models.dit.config
    return dict(
        text_states=torch.randn(1, 5, config.text_dim),
        image_states=torch.randn(1, config.image_tokens, config.image_dim),
        cond_latents=torch.randn(1, 20, 3, 4, 6),
        audio=torch.randn(2, 9, 5, config.audio.feature_layers, config.audio.feature_dim),
        region_masks=torch.ones(3, 4, 6),
    )


def test_dit_velocity_is_the_dit_on_one_unbatched_latent(models):
    inputs = _dit_inputs(models)
    latent, t = torch.randn(16, 3, 4, 6), torch.tensor([700.0])
    with torch.inference_mode():
        expected = models.dit(latent[None], t, **inputs)[0]
        assert torch.equal(DiTVelocity(models.dit)(latent, t, branch="cond", **inputs), expected)


def test_dit_velocity_lets_teacache_skip_the_blocks(models):
    inputs = _dit_inputs(models)
    cache = TeaCache("480p", threshold=1e9, warmup_steps=1)
    velocity = DiTVelocity(models.dit, cache)
    latent = torch.randn(16, 3, 4, 6)
    with torch.inference_mode():
        first = velocity(latent, torch.tensor([900.0]), branch="cond", **inputs)
        velocity(latent, torch.tensor([800.0]), branch="cond", **inputs)
    assert cache.computed["cond"] == 1 and cache.skipped["cond"] == 1
    with torch.inference_mode():
        assert torch.equal(first, models.dit(latent[None], torch.tensor([900.0]), **inputs)[0])


def test_frames_are_truncated_to_bytes_like_the_reference_writer():
    video = torch.tensor([-1.0, -0.5, 0.0, 0.999, 1.0, 1.5]).view(1, 6, 1, 1).expand(3, 6, 1, 2)
    frames = to_uint8_frames(video)
    assert frames.shape == (6, 1, 2, 3) and frames.dtype == torch.uint8
    assert frames[:, 0, 0, 0].tolist() == [0, 63, 127, 254, 255, 255]
