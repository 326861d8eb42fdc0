"""The VAE's rows shared by the ranks of a process group (`WanVAE.row_bands`): each rank encodes and decodes its
band of every frame, trading one row with each neighbour before every 3×3 convolution, and the bands are
all-gathered where the next layer needs whole frames.

Every rank then holds the same whole result, as when each ran the VAE alone (the next chunk's motion frames and
rank 0's MP4 both need it), for about 1/N of the VAE's time: with 4 ranks at 960×960, a band is 30 of 120 latent
rows.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from engine.models.vae import RowBands


def row_bands_over(group: dist.ProcessGroup) -> RowBands:
    """Bands of rows for the ranks of `group`, in its rank order."""

    def all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
        every = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        dist.all_gather(every, tensor, group=group)
        return every

    return RowBands(index=dist.get_rank(group), count=dist.get_world_size(group), all_gather=all_gather)
