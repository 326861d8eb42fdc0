"""Sharded weights (`--dit_fsdp`, `--t5_fsdp`): each rank keeps 1/N of every block's parameters.

PyTorch FSDP2 (`fully_shard`) per block, as the reference wraps each element of `model.blocks` (spec §7): a
block's parameters are all-gathered just before it runs and freed right after, so a rank holds whole weights
for one block at a time. Embeddings, head and projections stay replicated (they are small). The gathers are
collectives on the world group, so every rank must run the sharded model the same number of times, which the
serve loop guarantees (every rank runs every stage of every job).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from engine.parallel.groups import ProcessGroups


def shard_blocks(blocks: Iterable[nn.Module], groups: ProcessGroups) -> None:
    """Shard each module of `blocks` over all ranks, in place (their parameters become DTensor shards)."""
    mesh = init_device_mesh(groups.device.type, (groups.world_size,))
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)


def dit_blocks(dit: nn.Module) -> Iterable[nn.Module]:
    return dit.blocks


def t5_blocks(t5: nn.Module) -> Iterable[nn.Module]:
    """The umT5 encoder layers inside `UMT5TextEncoder` (transformers' UMT5Stack)."""
    return t5.model.encoder.block
