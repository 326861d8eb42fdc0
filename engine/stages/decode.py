"""Decode stage: a chunk's clean latent -> video frames, and frames -> the bytes the encoder takes.

The VAE decodes one chunk at a time (the next chunk is conditioned on this one's last frames, so decoding cannot
wait for the end); frames leave the device as uint8 so that a long video never holds float frames of every chunk.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from engine.models.vae import WanVAE


@torch.inference_mode()
def decode_pieces(vae: WanVAE, latent: torch.Tensor) -> Iterator[torch.Tensor]:
    """Normalised latent [z, T, h, w] -> frames [3, 1 + 4(T-1), 8h, 8w] float32 in [-1, 1], as consecutive pieces
    [3, n, 8h, 8w], each as soon as the VAE has it."""
    vae_dtype = next(vae.parameters()).dtype
    for piece in vae.decode_stream(latent[None].to(vae_dtype)):
        yield piece[0].float()


def to_uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """[3, F, H, W] in [-1, 1] -> [F, H, W, 3] uint8, truncating like the reference's writer (not rounding)."""
    return ((video + 1.0) / 2.0 * 255.0).clamp(0.0, 255.0).to(torch.uint8).permute(1, 2, 3, 0)
