"""Presets: the size buckets, the tiny preset's models, and what the full preset needs on disk."""

from __future__ import annotations

import pytest
import torch

from engine.models.t5 import tokenize_prompts
from engine.presets import (
    PIXELS_PER_TOKEN,
    bucket_size,
    character_tokenizer,
    get_preset,
    load_models,
    missing_files,
)
from engine.weights import WeightsError
from storage.buckets import SIZE_BUCKETS


@pytest.mark.parametrize("quality", ["480p", "720p"])
def test_a_frame_composed_at_a_bucket_size_renders_at_that_size(quality):
    for height, width in SIZE_BUCKETS[quality].values():
        assert bucket_size(quality, height, width) == (height, width)


def test_bucket_follows_the_frame_aspect():
    assert bucket_size("480p", 1440, 2560) == (448, 896)  # spec §1.3: 0.5625 -> 0.50
    assert bucket_size("720p", 1440, 2560) == (704, 1280)  # -> 0.55
    assert bucket_size("720p", 1324, 2146) == (768, 1216)  # multi3.png, 0.617 -> 0.63
    with pytest.raises(ValueError, match="1080p"):
        bucket_size("1080p", 100, 100)


def test_tiny_sizes_keep_the_aspect_on_the_token_grid():
    tiny = get_preset("tiny")
    for quality, table in SIZE_BUCKETS.items():
        for height, width in table.values():
            small = tiny.frame_size(quality, height, width)
            assert all(side % PIXELS_PER_TOKEN == 0 and side >= 2 * PIXELS_PER_TOKEN for side in small)
            assert small[0] / small[1] == pytest.approx(height / width, rel=0.35)
    assert tiny.frame_size("720p", 960, 960) == (96, 96)
    assert tiny.frame_size("480p", 448, 896) == (48, 96)
    assert get_preset("full").frame_size("720p", 960, 960) == (960, 960)


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="huge"):
        get_preset("huge")


def test_full_preset_names_every_missing_file(tmp_path):
    missing = {path.relative_to(tmp_path).as_posix() for path in missing_files(tmp_path)}
    assert {
        "Wan2.1-I2V-14B-480P/diffusion_pytorch_model.safetensors.index.json",
        "Wan2.1-I2V-14B-480P/multitalk.safetensors",
        "Wan2.1-I2V-14B-480P/Wan2.1_VAE.pth",
        "Wan2.1-I2V-14B-480P/models_t5_umt5-xxl-enc-bf16.pth",
        "Wan2.1-I2V-14B-480P/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
        "Wan2.1-I2V-14B-480P/google/umt5-xxl",
        "chinese-wav2vec2-base/config.json",
        "chinese-wav2vec2-base/model.safetensors",
    } <= missing
    with pytest.raises(WeightsError, match=r"missing weight files: .*Wan2\.1_VAE\.pth"):
        load_models("full", tmp_path)
    with pytest.raises(WeightsError, match="weights directory"):
        load_models("full", None)


def test_tiny_models_fit_together_and_are_seeded():
    first, second, other = load_models("tiny"), load_models("tiny"), load_models("tiny", seed=1)
    dit = first.dit.config
    assert dit.text_dim == first.t5.config.dim and dit.text_len == first.t5.config.text_len
    assert dit.image_dim == first.clip.config.dim and dit.image_tokens == first.clip.config.num_tokens
    assert dit.audio.feature_dim == first.wav2vec.config.hidden_size
    assert dit.audio.feature_layers == first.wav2vec.config.num_hidden_layers
    for a, b in zip(first.dit.state_dict().values(), second.dit.state_dict().values()):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, c) for a, c in zip(first.vae.state_dict().values(), other.vae.state_dict().values()))
    assert not any(p.requires_grad for p in first.dit.parameters())


def test_building_tiny_models_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    load_models("tiny")
    assert torch.equal(torch.rand(3), expected)


def test_character_tokenizer_pads_truncates_and_ends_with_eos():
    tokenizer = character_tokenizer(64)
    ids, mask = tokenize_prompts(tokenizer, ["Hi there", "x" * 40, "好"], 16)
    assert ids.shape == mask.shape == (3, 16)
    assert ids[0, :9].tolist()[-1] == 1 and mask[0].sum() == 9  # 8 characters + EOS, then padding (id 0)
    assert ids[0, 9:].eq(0).all()
    assert mask[1].all() and ids[1, -1] == 1  # truncated, EOS kept
    assert ids[2, 0] == 2  # unknown character
    assert int(ids.max()) < 64
    with pytest.raises(ValueError, match="vocabulary"):
        character_tokenizer(16)
