"""Wan2.1's causal 3D VAE: video in [-1, 1] <-> normalised 16-channel latents, fp32.

The network itself is diffusers' `AutoencoderKLWan`, which computes the same function as the reference
`WanVAE_` (tests/engine/test_vae_parity.py holds it to the reference's own outputs). This file adds what
the reference wraps around the network: the per-channel latent normalisation with a precomputed fp32
reciprocal of the std (the reference multiplies by it on encode and divides by it on decode, which is
not bit-identical to dividing by the std), the posterior mean instead of a sample, and the clamp of the
decoded frames. Encoding runs causally over the frames in chunks [0], [1-4], [5-8], ... as the reference
does, so a clip must have 1 + 4k frames.

No file I/O here: engine/weights.py reads `Wan2.1_VAE.pth` and renames its keys for this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKLWan
from torch import nn

# Per-channel statistics of Wan2.1 latents (spec §3.12), part of the model like diffusers' config.
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


@dataclass(frozen=True)
class VAEConfig:
    """Shape of the VAE; the defaults are `Wan2.1_VAE.pth`."""

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD

    @classmethod
    def tiny(cls) -> VAEConfig:
        """Same topology and strides (4x8x8, 16 latent channels), a few thousand times fewer weights."""
        return cls(base_dim=4, num_res_blocks=1)

    def __post_init__(self) -> None:
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(f"latents_mean/std need {self.z_dim} values, one per latent channel")

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    @property
    def spatial_stride(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)


class WanVAE(nn.Module):
    """Encodes a clip to the normalised posterior mean and decodes latents back to clamped frames."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.autoencoder = AutoencoderKLWan(
            base_dim=config.base_dim,
            z_dim=config.z_dim,
            dim_mult=list(config.dim_mult),
            num_res_blocks=config.num_res_blocks,
            attn_scales=[],
            temperal_downsample=list(config.temporal_downsample),
            dropout=0.0,
            latents_mean=list(config.latents_mean),
            latents_std=list(config.latents_std),
        )
        # fp32 whatever the weights' dtype; not in the state dict (they are config, not checkpoint).
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(shape)
        inv_std = (1.0 / torch.tensor(config.latents_std, dtype=torch.float32)).view(shape)
        self.register_buffer("latents_mean", mean, persistent=False)
        self.register_buffer("latents_inv_std", inv_std, persistent=False)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, 1+4k, H, W] in [-1, 1] -> normalised latent mean [B, z, 1+k, H/8, W/8]."""
        frames = video.shape[2]
        if (frames - 1) % self.config.temporal_stride:
            raise ValueError(f"the VAE encodes 1 + {self.config.temporal_stride}k frames, got {frames}")
        mean = self.autoencoder.encode(video).latent_dist.mode()
        return (mean - self.latents_mean.to(mean.dtype)) * self.latents_inv_std.to(mean.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, z, T, h, w] -> frames [B, 3, 1 + 4(T-1), 8h, 8w] clamped to [-1, 1]."""
        latents = latents / self.latents_inv_std.to(latents.dtype) + self.latents_mean.to(latents.dtype)
        return self.autoencoder.decode(latents).sample
