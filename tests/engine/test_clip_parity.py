"""WanCLIPImageEncoder (transformers' CLIPVisionModel, N-1 blocks) against the reference open-clip tower, fp32.

Fixtures: fixtures/clip/README.md. The whole reference CLIP (text tower included) goes through `load_clip`.
"""

from __future__ import annotations

import pytest
import torch

from engine.models.clip import CLIPConfig, WanCLIPImageEncoder
from engine.weights import convert_clip_key, load_clip

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference(load_fixture):
    return load_fixture("clip/io")


@pytest.fixture(scope="module")
def encoder(load_fixture, tmp_path_factory) -> WanCLIPImageEncoder:
    path = tmp_path_factory.mktemp("clip") / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
    torch.save(load_fixture("clip/reference_state_dict"), path)
    return load_clip(path, config=CLIPConfig.tiny(), dtype=torch.float32)


@torch.no_grad()
def test_features_of_all_but_the_last_block_match_reference(encoder, reference, relative_error):
    frames = reference["frame"].transpose(0, 1)  # the reference's [C, T, H, W] -> [T, C, H, W]
    features = encoder(frames)
    assert features.shape == (1, 257, 32)
    assert relative_error(features, reference["features"]) <= TOLERANCE


def test_only_the_vision_blocks_wan_runs_are_kept(load_fixture):
    original = load_fixture("clip/reference_state_dict")
    config = CLIPConfig.tiny()
    kept = {key for key in original if convert_clip_key(key, config) is not None}
    assert any(key.startswith("textual.") for key in original)
    assert not any(key.startswith("textual.") for key in kept)
    assert {"log_scale", "visual.head"} <= set(original) - kept
    assert not any(key.startswith("visual.transformer.2.") for key in kept)  # the last of 3 blocks
    assert convert_clip_key("visual.transformer.1.attn.to_qkv.weight", config) == [
        f"vision.encoder.layers.1.self_attn.{name}_proj.weight" for name in ("q", "k", "v")
    ]


@torch.no_grad()
def test_default_fp16_tower_stays_within_fp16_rounding(load_fixture, reference, relative_error, tmp_path):
    path = tmp_path / "clip.pth"
    torch.save(load_fixture("clip/reference_state_dict"), path)
    encoder = load_clip(path, config=CLIPConfig.tiny())
    assert {p.dtype for p in encoder.parameters()} == {torch.float16}
    features = encoder(reference["frame"].transpose(0, 1))
    assert features.dtype == torch.float16
    assert relative_error(features, reference["features"]) <= 5e-3


def test_any_frame_size_is_squashed_to_the_model_resolution():
    encoder = WanCLIPImageEncoder(CLIPConfig.tiny())
    pixels = encoder.preprocess(torch.zeros(2, 3, 90, 40))
    assert pixels.shape == (2, 3, 224, 224)
    # mid-grey (0 in [-1, 1]) is 0.5 before CLIP's normalisation
    expected = (0.5 - torch.tensor(CLIPConfig.mean)) / torch.tensor(CLIPConfig.std)
    torch.testing.assert_close(pixels[0, :, 0, 0], expected)
