"""WanVAE (diffusers' AutoencoderKLWan + Wan's normalisation) against the reference WanVAE_, fp32.

Fixtures: fixtures/vae/README.md. The checkpoint goes through the real path: the reference state dict saved
as a `.pth`, read by `load_vae`, keys converted, loaded strictly.
"""

from __future__ import annotations

import pytest
import torch

from engine.models.vae import VAEConfig, WanVAE
from engine.weights import load_vae

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference(load_fixture):
    return load_fixture("vae/io")


@pytest.fixture(scope="module")
def vae(load_fixture, tmp_path_factory) -> WanVAE:
    path = tmp_path_factory.mktemp("vae") / "Wan2.1_VAE.pth"
    torch.save(load_fixture("vae/reference_state_dict"), path)
    return load_vae(path, config=VAEConfig.tiny())


@torch.no_grad()
def test_encode_of_three_causal_chunks_matches_reference(vae, reference, relative_error):
    latent = vae.encode(reference["video"])
    assert latent.shape == (1, 16, 3, 2, 3)
    assert relative_error(latent, reference["latent"]) <= TOLERANCE


@torch.no_grad()
@pytest.mark.parametrize(("latent", "expected"), [("latent", "decoded"), ("latent_in", "decoded_random")])
def test_decode_matches_reference(vae, reference, relative_error, latent, expected):
    frames = vae.decode(reference[latent])
    assert frames.shape == (1, 3, 9, 16, 24)
    assert frames.abs().max() <= 1.0
    assert relative_error(frames, reference[expected]) <= TOLERANCE


@torch.no_grad()
def test_encoding_is_causal_in_time(vae, reference):
    """The first latent frame sees only the first pixel frame: later frames cannot change it."""
    video = reference["video"]
    altered = video.clone()
    altered[:, :, 1:] = -altered[:, :, 1:]
    first, second = vae.encode(video), vae.encode(altered)
    torch.testing.assert_close(first[:, :, :1], second[:, :, :1], rtol=0, atol=0)
    assert not torch.allclose(first[:, :, 1:], second[:, :, 1:])


def test_encode_refuses_a_frame_count_that_is_not_one_plus_four_k(vae):
    with pytest.raises(ValueError, match="1 \\+ 4k frames, got 8"):
        vae.encode(torch.zeros(1, 3, 8, 16, 16))


def test_latent_statistics_stay_fp32_when_the_weights_are_bf16(load_fixture, tmp_path):
    path = tmp_path / "vae.pth"
    torch.save(load_fixture("vae/reference_state_dict"), path)
    vae = load_vae(path, config=VAEConfig.tiny(), dtype=torch.bfloat16)
    assert vae.autoencoder.quant_conv.weight.dtype == torch.bfloat16
    assert vae.latents_mean.dtype == vae.latents_inv_std.dtype == torch.float32
    torch.testing.assert_close(vae.latents_inv_std.flatten(), 1.0 / torch.tensor(VAEConfig().latents_std))
