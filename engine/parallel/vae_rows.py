"""The VAE's rows shared by the ranks of a process group (`WanVAE.row_bands`): each rank encodes and decodes its
band of every frame, and the bands are all-gathered where the next layer needs whole frames.

Every rank then holds the same whole result, as when each ran the VAE alone (the next chunk's motion frames and
rank 0's MP4 both need it), for a fraction of the VAE's time: with 4 ranks at 960×960, a band is 30 of 120 latent
rows plus halos of 11 (encoder) and 15 (decoder) rows on its inner sides.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from engine.models.vae import RowBands


def row_bands_over(group: dist.ProcessGroup) -> RowBands:
    """Bands of rows for the ranks of `group`, joined with an all-gather (pieces padded to the longest band)."""

    def gather(piece: torch.Tensor, dim: int, sizes: list[int]) -> torch.Tensor:
        padding = list(piece.shape)
        padding[dim] = max(sizes) - piece.shape[dim]
        padded = torch.cat([piece, piece.new_zeros(padding)], dim=dim).contiguous()
        pieces = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(pieces, padded, group=group)
        return torch.cat([whole.narrow(dim, 0, size) for whole, size in zip(pieces, sizes, strict=True)], dim=dim)

    return RowBands(index=dist.get_rank(group), count=dist.get_world_size(group), gather=gather)
