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
ULYSSES_CHUNKS = 1  # pieces of a rank's heads exchanged while attention runs on the previous ones


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
    padded = torch.cat([piece, piece.new_zeros(shape)], dim=dim).contiguous()
    return torch.cat([whole.narrow(dim, 0, size) for whole, size in zip(all_gather(padded), sizes, strict=True)], dim)


def _all_to_all(
    send: torch.Tensor, send_counts: list[int], receive_counts: list[int], group: dist.ProcessGroup
) -> tuple[torch.Tensor, dist.Work]:
    """Start sending the flat `send`'s consecutive pieces of `send_counts[j]` elements to rank j and receiving
    `receive_counts[j]` elements from rank j, back to back in rank order; sizes may differ per rank. Returns the
    receive buffer and the exchange to `wait()` on before reading it (on CUDA that only orders the streams).

    Through `all_to_all_single` on flat buffers: gloo's list `all_to_all` refuses unequal tensors.
    """
    received = send.new_empty(sum(receive_counts))
    work = dist.all_to_all_single(
        received, send, output_split_sizes=receive_counts, input_split_sizes=send_counts, group=group, async_op=True
    )
    return received, work


class UlyssesAttention:
    """The attention backend of a sequence-parallel rank: q, k, v hold all heads of this rank's tokens.

    `sizes` (every rank's token count) is set by `SequenceParallelDiT.run_blocks` before the blocks run; the
    backend contract `(q, k, v)` has no room for it. Local attention uses `local_backend` on whole sequences.

    With `max_chunks` > 1 each rank's head group is exchanged and attended in pieces (as many as divide the group,
    up to `max_chunks`), pipelined: while attention runs on one piece, the next piece's q, k, v and the previous
    piece's output are in flight, so only the first and the last exchange wait alone. Heads are independent, so the
    result is the same.
    """

    def __init__(self, group: dist.ProcessGroup, local_backend: str, max_chunks: int = ULYSSES_CHUNKS) -> None:
        self.group = group
        self.world = dist.get_world_size(group)
        self.local_backend = local_backend
        self.max_chunks = max_chunks
        self.sizes: list[int] | None = None

    @torch.compiler.disable  # async exchanges: compiled blocks break here and run the pipeline eagerly
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.sizes is None:
            raise RuntimeError("Ulysses attention called outside SequenceParallelDiT.run_blocks")
        batch, heads, length, dim = q.shape
        group_heads = heads // self.world
        chunks = max(c for c in range(1, self.max_chunks + 1) if group_heads % c == 0)
        piece = group_heads // chunks
        # [B, L_rank, N, chunks, g, d]: rank j's piece c of heads. A view in the token-major layout the projections
        # produce; other layouts are copied once here.
        grouped = [t.transpose(1, 2).reshape(batch, length, self.world, chunks, piece, dim) for t in (q, k, v)]
        out = q.new_empty(batch, length, self.world, chunks, piece, dim)
        incoming = self._send_heads(grouped, chunk=0)
        outgoing = []
        for chunk in range(chunks):
            q_all, k_all, v_all = (received() for received in incoming)  # [B, g, L, d]
            if chunk + 1 < chunks:
                incoming = self._send_heads(grouped, chunk=chunk + 1)
            outgoing.append(self._send_tokens(attention(q_all, k_all, v_all, backend=self.local_backend)))
        for chunk, received in enumerate(outgoing):
            out[:, :, :, chunk] = received()  # [B, L_rank, N, g, d]
        return out.view(batch, length, heads, dim).transpose(1, 2)  # [B, H, L_rank, d]

    def _send_heads(self, grouped: list[torch.Tensor], chunk: int) -> list[Callable[[], torch.Tensor]]:
        """Start trading this rank's tokens of piece `chunk` of every rank's heads ([B, L_rank, N, chunks, g, d] for
        q, k, v) for all tokens of this rank's piece. Each returned call waits and gives [B, g, L, d].

        One copy puts each rank's piece together; for one sample the received pieces already lie in token order."""
        batch, _, _, _, piece, dim = grouped[0].shape
        counts = [batch * size * piece * dim for size in self.sizes]

        def send(x: torch.Tensor) -> Callable[[], torch.Tensor]:
            outgoing = x[:, :, :, chunk].permute(2, 0, 1, 3, 4).reshape(-1)  # [N, B, L_rank, g, d]
            received, work = _all_to_all(outgoing, [outgoing.numel() // self.world] * self.world, counts, self.group)

            def wait() -> torch.Tensor:
                work.wait()
                if batch == 1:
                    return received.view(1, -1, piece, dim).transpose(1, 2)
                parts = [part.view(batch, -1, piece, dim) for part in received.split(counts)]
                return torch.cat(parts, dim=1).transpose(1, 2)

            return wait

        return [send(x) for x in grouped]

    def _send_tokens(self, x: torch.Tensor) -> Callable[[], torch.Tensor]:
        """Start sending [B, g, L, d] back: rank i gets its tokens. The call waits and gives [B, L_rank, N, g, d]."""
        batch, piece, _, dim = x.shape
        tokens = x.transpose(1, 2)  # [B, L, g, d]; for one sample, already rank after rank in memory
        send = tokens.reshape(-1) if batch == 1 else torch.cat([p.reshape(-1) for p in tokens.split(self.sizes, 1)])
        length = self.sizes[dist.get_rank(self.group)]
        counts = [batch * size * piece * dim for size in self.sizes]
        received, work = _all_to_all(send, counts, [batch * length * piece * dim] * self.world, self.group)

        def wait() -> torch.Tensor:
            work.wait()
            return received.view(self.world, batch, length, piece, dim).permute(1, 2, 0, 3, 4)

        return wait


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
        self,
        dit: MultiTalkDiT,
        group: dist.ProcessGroup,
        attention_backend: SequenceAttention | None = None,
        ulysses_chunks: int = ULYSSES_CHUNKS,
    ) -> None:
        super().__init__()
        self.dit = dit
        self.group = group
        self.world = dist.get_world_size(group)
        if dit.config.num_heads % self.world:
            raise ValueError(f"{self.world} sequence-parallel ranks do not divide {dit.config.num_heads} heads")
        self.ulysses = attention_backend or UlyssesAttention(group, dit.config.attention_backend, ulysses_chunks)
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
