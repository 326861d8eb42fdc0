"""Sequence-parallel attention through xfuser 0.4.5 (Ulysses x ring, yunchang kernels): GPUs only.

The same seam as the built-in backend (engine/parallel/sequence.py): an object with `sizes` that
`SequenceParallelDiT` sets before the blocks run, called as `(q, k, v)` with this rank's tokens in the attention
layout [B, H, L_rank, d]. xfuser is imported when this backend is built, never at module import: it does not
import on a CPU-only torch, and 0.5-0.7 cannot build their attention with any released yunchang
(performance.md §3.2b), hence the 0.4.5 pin. Its exchange needs equal slices, so the token count must divide
by the number of ranks (the built-in backend has no such limit). Checked on GPUs in issue 5 item 9, not in CI.
"""

from __future__ import annotations

import torch

from engine.parallel.groups import ParallelConfig, ProcessGroups


class XFuserAttention:
    def __init__(self, config: ParallelConfig, groups: ProcessGroups) -> None:
        if groups.device.type != "cuda":
            raise RuntimeError("the xfuser attention backend needs CUDA; use the built-in one (--sp_backend torch)")
        from xfuser.core.distributed import init_distributed_environment, initialize_model_parallel
        from xfuser.core.long_ctx_attention import xFuserLongContextAttention
        from yunchang.kernels import AttnType

        # Reuses the process group torchrun's environment already initialised; builds xfuser's SP/ring groups.
        init_distributed_environment(rank=groups.rank, world_size=groups.world_size)
        initialize_model_parallel(
            sequence_parallel_degree=config.sequence_parallel_size, ulysses_degree=config.ulysses_size,
            ring_degree=config.ring_size,
        )  # fmt: skip
        # cuDNN SDPA inside: no flash-attn package needed, and equal to one-GPU attention (performance.md §3.2b).
        self.attention = xFuserLongContextAttention(attn_type=AttnType.TORCH_CUDNN)
        self.sizes: list[int] | None = None

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.sizes is None or len(set(self.sizes)) != 1:
            raise ValueError(f"xfuser needs equal token slices per rank, got {self.sizes}")
        out = self.attention(None, query=q.transpose(1, 2), key=k.transpose(1, 2), value=v.transpose(1, 2),
                             causal=False)  # fmt: skip  # [B, L_rank, H, d]
        return out.transpose(1, 2)
