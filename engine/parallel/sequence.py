"""Sequence parallelism for the DiT with plain `torch.distributed`: it runs on gloo (CPU) and NCCL (GPU) alike.

`MultiTalkDiT` exposes where to split (spec §7, `MultiTalkDiT` docstring): after `embed`, each rank takes a
contiguous slice of the video tokens and of the RoPE table, runs every block on it, and the slices are gathered
before `finish`. Inside a block, the one token-to-token attention goes through the Ulysses exchange registered
here as an attention backend: an all-to-all trades "all heads of my tokens" for "my heads of all tokens", local
attention runs on whole sequences, and a second all-to-all trades back. Every other question a block asks about
the whole sequence (frame 0's keys, the speakers' map range) goes to `DistributedShard`.

Unlike the reference, the split need not be even and nothing is padded inside attention: padded tokens are not
masked in the reference's path, so its N-rank output differs from its 1-rank output. Here N ranks compute what one
rank computes, to float rounding; tests/engine/test_parallel.py proves it on gloo.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

import torch
import torch.distributed as dist
from torch import nn

from engine.models.attention import attention, register_attention_backend
from engine.models.dit import DiTConditioning, MultiTalkDiT, SequenceShard

ULYSSES_BACKEND = "ulysses"


def split_sizes(length: int, parts: int) -> list[int]:
    """Contiguous part sizes differing by at most one, larger parts first (as `torch.tensor_split`)."""
    base, extra = divmod(length, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class DistributedShard(SequenceShard):
    """This rank's slice of the token sequence and the collectives blocks need, over one process group."""

    def __init__(self, group: dist.ProcessGroup, sizes: list[int]) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.sizes = sizes
        self.offset = sum(sizes[: self.rank])

    @property
    def length(self) -> int:
        return self.sizes[self.rank]

    def gather_tokens(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        def all_gather(padded: torch.Tensor) -> list[torch.Tensor]:
            pieces = [torch.empty_like(padded) for _ in self.sizes]
            dist.all_gather(pieces, padded, group=self.group)
            return pieces

        return join_uneven(x, dim, self.sizes, all_gather)

    def gather_prefix(self, x: torch.Tensor, dim: int, count: int) -> torch.Tensor:
        # Only the ranks holding tokens [0, count) send, and only those tokens: at 960×960 frame 0 is 3,600 of
        # 75,600 tokens, so this moves ~5 % of what gathering every key and slicing would (the reference does that).
        pieces, start = [], 0
        for rank, size in enumerate(self.sizes):
            take = max(0, min(count, start + size) - start)
            start += size
            if take == 0:
                continue
            shape = list(x.shape)
            shape[dim] = take
            piece = x.narrow(dim, 0, take).contiguous() if rank == self.rank else x.new_empty(shape)
            dist.broadcast(piece, src=dist.get_global_rank(self.group, rank), group=self.group)
            pieces.append(piece)
        return torch.cat(pieces, dim=dim)

    def global_min(self, x: torch.Tensor) -> torch.Tensor:
        return self._reduce(x, dist.ReduceOp.MIN)

    def global_max(self, x: torch.Tensor) -> torch.Tensor:
        return self._reduce(x, dist.ReduceOp.MAX)

    def _reduce(self, x: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
        # In fp32: min/max survive the round trip exactly, and gloo reduces fp32 on every build.
        out = x.float().contiguous()
        dist.all_reduce(out, op=op, group=self.group)
        return out.to(x.dtype)


def join_uneven(
    piece: torch.Tensor, dim: int, sizes: list[int], all_gather: Callable[[torch.Tensor], list[torch.Tensor]]
) -> torch.Tensor:
    """Every rank's `piece` (lengths `sizes` along `dim`, in rank order) joined along `dim`. `all_gather` needs
    equal shapes: each piece is padded to the longest, then trimmed back."""
    shape = list(piece.shape)
    shape[dim] = max(sizes) - piece.shape[dim]
    padded = torch.cat([piece, piece.new_zeros(shape)], dim=dim) if shape[dim] else piece.contiguous()
    return torch.cat([whole.narrow(dim, 0, size) for whole, size in zip(all_gather(padded), sizes, strict=True)], dim)


def _all_to_all(
    send: torch.Tensor, send_counts: list[int], receive_counts: list[int], group: dist.ProcessGroup
) -> torch.Tensor:
    """Send the flat `send`'s consecutive pieces of `send_counts[j]` elements to rank j; receive `receive_counts[j]`
    elements from rank j, back to back in rank order. Sizes may differ per rank.

    Through `all_to_all_single` on flat buffers: gloo's list `all_to_all` refuses unequal tensors.
    """
    received = send.new_empty(sum(receive_counts))
    dist.all_to_all_single(
        received, send, output_split_sizes=receive_counts, input_split_sizes=send_counts, group=group
    )
    return received


class UlyssesAttention:
    """The attention backend of a sequence-parallel rank: q, k, v hold all heads of this rank's tokens.

    `sizes` (every rank's token count) is set by `SequenceParallelDiT.run_blocks` before the blocks run; the
    backend contract `(q, k, v)` has no room for it. Local attention uses `local_backend` on whole sequences.
    """

    def __init__(self, group: dist.ProcessGroup, local_backend: str) -> None:
        self.group = group
        self.world = dist.get_world_size(group)
        self.local_backend = local_backend
        self.sizes: list[int] | None = None

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.sizes is None:
            raise RuntimeError("Ulysses attention called outside SequenceParallelDiT.run_blocks")
        q, k, v = (self._heads_to_ranks(t) for t in (q, k, v))  # [B, H/N, L, d]
        out = attention(q, k, v, backend=self.local_backend)
        return self._tokens_to_ranks(out)  # [B, H, L_rank, d]

    def _heads_to_ranks(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, L_rank, d] -> [B, H/N, L, d]: send head group j to rank j, receive every rank's tokens.

        In token-major memory ([B, L, H, d], the layout the projections produce and attention reads): one copy puts
        each rank's head group together; for one sample the received pieces already lie in token order."""
        batch, heads, length, dim = x.shape
        group_heads = heads // self.world
        send = x.transpose(1, 2).reshape(batch, length, self.world, group_heads, dim).permute(2, 0, 1, 3, 4)
        counts = [batch * size * group_heads * dim for size in self.sizes]
        received = _all_to_all(send.reshape(-1), [send[0].numel()] * self.world, counts, self.group)
        if batch == 1:
            tokens = received.view(1, -1, group_heads, dim)
        else:
            pieces = received.split(counts)
            tokens = torch.cat([p.view(batch, -1, group_heads, dim) for p in pieces], dim=1)
        return tokens.transpose(1, 2)

    def _tokens_to_ranks(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H/N, L, d] -> [B, H, L_rank, d]: send rank i its tokens, receive every rank's head group."""
        batch, group_heads, _, dim = x.shape
        tokens = x.transpose(1, 2)  # [B, L, H/N, d]; for one sample, already rank after rank in memory
        send = tokens.reshape(-1) if batch == 1 else torch.cat([p.reshape(-1) for p in tokens.split(self.sizes, 1)])
        length = self.sizes[dist.get_rank(self.group)]
        counts = [batch * size * group_heads * dim for size in self.sizes]
        received = _all_to_all(send, counts, [batch * length * group_heads * dim] * self.world, self.group)
        heads = received.view(self.world, batch, length, group_heads, dim).permute(1, 2, 0, 3, 4)
        return heads.reshape(batch, length, self.world * group_heads, dim).transpose(1, 2)  # the one copy


class SequenceAttention(Protocol):
    """A sequence-parallel attention backend: `sizes` (every rank's token count) is set around each forward."""

    sizes: list[int] | None

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...


class SequenceParallelDiT(nn.Module):
    """A `MultiTalkDiT` whose blocks run on a token slice per rank; same calls, same result as the DiT.

    `embed` and `finish` run whole on every rank (they are cheap and their outputs replicated); `run_blocks`
    splits, runs the blocks, gathers. Step caches (TeaCache) wrap `run_blocks` unchanged: their decision input is
    replicated, so every rank skips the same calls.
    """

    def __init__(
        self, dit: MultiTalkDiT, group: dist.ProcessGroup, attention_backend: SequenceAttention | None = None
    ) -> None:
        super().__init__()
        self.dit = dit
        self.group = group
        self.world = dist.get_world_size(group)
        if dit.config.num_heads % self.world:
            raise ValueError(f"{self.world} sequence-parallel ranks do not divide {dit.config.num_heads} heads")
        self.ulysses = attention_backend or UlyssesAttention(group, local_backend=dit.config.attention_backend)
        register_attention_backend(ULYSSES_BACKEND, self.ulysses)
        for block in dit.blocks:
            block.self_attn.attention_backend = ULYSSES_BACKEND

    @property
    def config(self):
        return self.dit.config

    @property
    def dtype(self) -> torch.dtype:
        return self.dit.dtype

    def forward(self, *inputs: torch.Tensor, **named: torch.Tensor) -> torch.Tensor:
        tokens, cond = self.embed(*inputs, **named)
        return self.finish(self.run_blocks(tokens, cond), cond)

    def embed(self, *inputs: torch.Tensor, **named: torch.Tensor) -> tuple[torch.Tensor, DiTConditioning]:
        return self.dit.embed(*inputs, **named)

    def finish(self, tokens: torch.Tensor, cond: DiTConditioning) -> torch.Tensor:
        return self.dit.finish(tokens, cond)

    def run_blocks(self, tokens: torch.Tensor, cond: DiTConditioning) -> torch.Tensor:
        """[B, L, D] whole on every rank -> [B, L, D] whole on every rank; the blocks see [B, L_rank, D]."""
        sizes = split_sizes(tokens.shape[1], self.world)
        shard = DistributedShard(self.group, sizes)
        start, stop = shard.offset, shard.offset + shard.length
        local_cond = replace(cond, rope_cos=cond.rope_cos[start:stop], rope_sin=cond.rope_sin[start:stop], shard=shard)
        self.ulysses.sizes = sizes
        try:
            local = self.dit.run_blocks(tokens[:, start:stop], local_cond)
        finally:
            self.ulysses.sizes = None
        return shard.gather_tokens(local, dim=1)
