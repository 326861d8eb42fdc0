"""WanVAE (diffusers' AutoencoderKLWan + Wan's normalisation) against the reference WanVAE_, fp32.

Fixtures: fixtures/vae/README.md. The checkpoint goes through the real path: the reference state dict saved
as a `.pth`, read by `load_vae`, keys converted, loaded strictly.
"""

from __future__ import annotations

import pytest
import torch

from engine.models.vae import VAEConfig, WanVAE, per_frame_prefix, per_frame_suffix
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


def scaled_random_vae() -> WanVAE:
    """The tiny topology with seeded random weights scaled up, so that every layer moves the result (the same
    weights in every process that calls it)."""
    torch.manual_seed(3)
    vae = WanVAE(VAEConfig.tiny()).eval()
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.normal_(0.0, 0.3)
    return vae


@pytest.fixture(scope="module")
def random_vae() -> WanVAE:
    return scaled_random_vae()


def frame_counts_seen(module: torch.nn.Module) -> list[int]:
    """The time length of every input `module` gets from now on (the hook stays: call on a fresh module)."""
    seen: list[int] = []
    module.register_forward_pre_hook(lambda _module, args: seen.append(args[0].shape[2]))
    return seen


@torch.no_grad()
def test_frame_by_frame_encode_equals_diffusers_whole_chunks(random_vae, relative_error):
    video = torch.rand(1, 3, 13, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    autoencoder = random_vae.autoencoder
    expected = autoencoder.encode(video).latent_dist.mode()
    expected = (expected - random_vae.latents_mean) * random_vae.latents_inv_std
    seen = frame_counts_seen(autoencoder.encoder.down_blocks[0])
    assert relative_error(random_vae.encode(video), expected) <= 1e-6
    assert seen == [1] * 13  # the full-resolution layers saw one frame at a time, not chunks of 4


@torch.no_grad()
def test_frame_by_frame_decode_equals_diffusers_whole_chunks(random_vae, relative_error):
    latents = torch.randn(1, 16, 4, 4, 6, generator=torch.Generator().manual_seed(2))
    expected = random_vae.autoencoder.decode(latents / random_vae.latents_inv_std + random_vae.latents_mean).sample
    seen = frame_counts_seen(random_vae.autoencoder.decoder.up_blocks[-1])
    frames = random_vae.decode(latents)
    assert frames.shape == expected.shape == (1, 3, 13, 32, 48)
    assert relative_error(frames, expected) <= 1e-6
    assert seen == [1] * 13


def test_the_per_frame_layers_of_the_full_vae_are_those_at_full_and_half_resolution():
    with torch.device("meta"):
        vae = WanVAE(VAEConfig())
    # encoder: 2 resblocks at 960, the 2D downsampling, 2 resblocks at 480; then the first temporal downsampling
    assert per_frame_prefix(vae.autoencoder.encoder) == 5
    assert vae.autoencoder.encoder.down_blocks[5].mode == "downsample3d"
    # decoder: the up block that ends in the 2D upsampling to 960 and the last one; the one before upsamples in time
    assert per_frame_suffix(vae.autoencoder.decoder) == 2
    assert vae.autoencoder.decoder.up_blocks[1].upsamplers[0].mode == "upsample3d"
