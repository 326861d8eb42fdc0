"""Does sequence parallelism compute what one rank computes, on this host? Run it under torchrun:

    torchrun --nproc_per_node=N -m engine.parallel.selfcheck [--xfuser] [--out report.json]

Every rank builds the same random inputs and a tiny random DiT, runs them alone and through the parallel
backends (the built-in Ulysses over the world group — NCCL on GPUs, gloo on CPUs — and, with `--xfuser`, xfuser
0.4.5's), and reports the largest relative error. Operators use it after changing drivers or NCCL settings;
CI runs it on gloo, the GPU hosts on NCCL.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from engine.models.attention import attention
from engine.models.dit import DiTConfig, MultiTalkDiT
from engine.parallel.groups import ParallelConfig, joined_groups
from engine.parallel.sequence import SequenceParallelDiT, UlyssesAttention, split_sizes


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-12)).item()


def _check_attention(backend, *, tokens: int, heads: int, dtype: torch.dtype, device, rank: int, world: int) -> float:
    generator = torch.Generator(device="cpu").manual_seed(7)
    q, k, v = (torch.randn(1, heads, tokens, 128, generator=generator).to(device, dtype) for _ in range(3))
    sizes = split_sizes(tokens, world)
    start = sum(sizes[:rank])
    backend.sizes = sizes
    try:
        local = backend(*(t[:, :, start : start + sizes[rank]] for t in (q, k, v)))
    finally:
        backend.sizes = None
    whole = attention(q, k, v)[:, :, start : start + sizes[rank]]
    return relative_error(local, whole)


def tiny_dit_inputs(config: DiTConfig, device="cpu") -> dict:
    """Seeded inputs of a DiT with the tiny config: two speakers, 3 latent frames of 8x8 (48 tokens)."""
    generator = torch.Generator(device="cpu").manual_seed(3)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device)

    masks = torch.zeros(3, 8, 8)
    masks[0, :, :4], masks[1, :, 4:] = 1, 1
    masks[0, :, 0], masks[2, :, 0] = 0, 1
    audio = config.audio
    return {
        "latents": rand(1, 16, 3, 8, 8),
        "timestep": torch.tensor([500.0], device=device),
        "text_states": rand(1, config.text_len, config.text_dim),
        "image_states": rand(1, config.image_tokens, config.image_dim),
        "cond_latents": rand(1, 20, 3, 8, 8),
        "audio": rand(2, 9, audio.window, audio.feature_layers, audio.feature_dim),
        "region_masks": masks.to(device),
    }


def _check_dit(groups, backend_factory=None) -> float:
    torch.manual_seed(0)  # the same random weights on every rank
    config = replace(DiTConfig.tiny(), num_heads=groups.world_size * 2, dim=groups.world_size * 32)
    dit = MultiTalkDiT(config).to(groups.device).eval()
    inputs = tiny_dit_inputs(config, groups.device)
    with torch.inference_mode():
        alone = dit(**inputs)
        backend = backend_factory() if backend_factory else None
        parallel = SequenceParallelDiT(dit, groups.world, attention_backend=backend)(**inputs)
    return relative_error(parallel, alone)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--xfuser", action="store_true", help="also check xfuser 0.4.5's attention (CUDA only)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with joined_groups() as groups:
        if not groups.is_distributed:
            raise SystemExit("run under torchrun with at least 2 processes")
        rank, world, device = groups.rank, groups.world_size, groups.device
        ulysses = UlyssesAttention(groups.world, local_backend="sdpa")
        report: dict = {"world_size": world, "backend": groups.backend, "device": str(device.type)}
        dtypes = [torch.float32, torch.bfloat16] if device.type == "cuda" else [torch.float32]
        for dtype in dtypes:
            name = str(dtype).removeprefix("torch.")
            report[f"ulysses_attention_{name}"] = _check_attention(
                ulysses, tokens=4099, heads=8, dtype=dtype, device=device, rank=rank, world=world
            )
        report["ulysses_tiny_dit_fp32"] = _check_dit(groups)
        if args.xfuser:
            from engine.parallel.xfuser_attention import XFuserAttention

            xfuser = XFuserAttention(ParallelConfig(ulysses_size=world), groups)
            # bf16 only: its cuDNN kernel has no fp32 path.
            report["xfuser_attention_bfloat16"] = _check_attention(
                xfuser, tokens=4096, heads=8, dtype=torch.bfloat16, device=device, rank=rank, world=world
            )
        worst: list = [None] * world
        torch.distributed.all_gather_object(worst, report, group=groups.control)
        if rank == 0:
            merged = {key: max(r[key] for r in worst) if isinstance(value, float) else value
                      for key, value in report.items()}  # fmt: skip
            print(json.dumps(merged, indent=2))
            if args.out:
                args.out.write_text(json.dumps(merged, indent=2))


if __name__ == "__main__":
    main()
