"""Wav2VecAudioEncoder (transformers' Wav2Vec2Model, MultiTalk's forward order) against MultiTalk's subclass.

Fixtures: fixtures/wav2vec/README.md. The reference weights are laid out as the hub folder
(`config.json`, `preprocessor_config.json`, `model.safetensors` from `Wav2Vec2ForPreTraining`) and go through
`load_wav2vec` / `load_wav2vec_preprocessor`.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine.models.wav2vec import Wav2VecAudioEncoder, Wav2VecConfig, video_frame_count
from engine.weights import WeightsError, load_wav2vec, load_wav2vec_preprocessor

TOLERANCE = 1e-5
PREPROCESSOR = {
    "do_normalize": True,
    "feature_extractor_type": "Wav2Vec2FeatureExtractor",
    "feature_size": 1,
    "padding_side": "right",
    "padding_value": 0.0,
    "return_attention_mask": False,
    "sampling_rate": 16000,
}


@pytest.fixture(scope="module")
def reference(load_fixture):
    return load_fixture("wav2vec/io")


@pytest.fixture(scope="module")
def folder(load_fixture, tmp_path_factory):
    folder = tmp_path_factory.mktemp("chinese-wav2vec2-base")
    save_file(load_fixture("wav2vec/reference_state_dict"), folder / "model.safetensors")
    config = {**dataclasses.asdict(Wav2VecConfig.tiny()), "architectures": ["Wav2Vec2ForPreTraining"]}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    return folder


@pytest.fixture(scope="module")
def encoder(folder) -> Wav2VecAudioEncoder:
    return load_wav2vec(folder)


@torch.no_grad()
def test_features_at_video_rate_match_reference(encoder, reference, relative_error):
    frames = video_frame_count(reference["speech"].numel())
    features = encoder(reference["input_values"], frames)[0]
    assert features.shape == (32, 2, 32)  # [video frames, layers, channels]
    assert relative_error(features, reference["features"]) <= TOLERANCE


def test_a_folder_with_only_pytorch_model_bin_loads_the_same_weights(folder, encoder, load_fixture, tmp_path):
    for name in ("config.json", "preprocessor_config.json"):
        (tmp_path / name).write_text((folder / name).read_text())
    torch.save(load_fixture("wav2vec/reference_state_dict"), tmp_path / "pytorch_model.bin")
    from_bin = load_wav2vec(tmp_path)
    for (name, ours), (_, theirs) in zip(from_bin.state_dict().items(), encoder.state_dict().items(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, msg=name)


def test_preprocessor_from_the_folder_normalises_as_the_reference(folder, reference):
    extractor = load_wav2vec_preprocessor(folder)
    values = extractor(reference["speech"].numpy(), sampling_rate=16000).input_values
    torch.testing.assert_close(torch.from_numpy(np.squeeze(values)).unsqueeze(0), reference["input_values"])


@pytest.mark.parametrize(("samples", "frames"), [(16000, 25), (20800, 32), (18560, 28), (639, 0)])
def test_video_frame_count_truncates_seconds_times_fps_in_float(samples, frames):
    assert video_frame_count(samples) == frames


def test_stable_layer_norm_checkpoints_are_refused():
    with pytest.raises(ValueError, match="do_stable_layer_norm"):
        Wav2VecConfig.from_hf_config({"do_stable_layer_norm": True})


def test_folder_without_config_is_a_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="checkpoint file not found: .*config.json"):
        load_wav2vec(tmp_path)
