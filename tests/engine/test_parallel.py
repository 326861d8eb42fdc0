"""Sequence parallelism and sharded weights over real torch.distributed ranks (gloo, CPU): N ranks compute what one
rank computes.

The pytest side launches this same file under `torchrun --nproc_per_node=2`; the `__main__` side is what every
rank runs. Each check compares against the single-process result computed on that rank, and rank 0 writes a
report the test reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.parallel.sequence import split_sizes

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[2]


def test_split_sizes_are_contiguous_and_nearly_even():
    assert split_sizes(72, 2) == [36, 36]
    assert split_sizes(37, 2) == [19, 18]
    assert split_sizes(5, 4) == [2, 1, 1, 1]
    assert sum(split_sizes(1001, 8)) == 1001


def torchrun(script: Path, nproc: int, *args: str, timeout_s: float = 240) -> subprocess.CompletedProcess:
    """Run `script` under torchrun on loopback with gloo; a free port per run (--master_port=0 is torchrun's)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        str(script), *args,
    ]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False)


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_rank(tmp_path):
    report = tmp_path / "report.json"
    run = torchrun(Path(__file__), 2, str(report))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(report.read_text())
    assert results["world_size"] == 2
    # Ulysses attention on an uneven, odd-length split: same as whole-sequence attention.
    assert results["ulysses_attention_max_error"] <= 1e-6
    # The whole DiT with its blocks on two token slices (cut mid-frame): same velocity as one rank, and as the
    # public reference's fixture.
    assert results["ulysses_calls"] == 2  # one exchange per block of the tiny DiT: the split really ran
    assert results["dit_vs_one_rank_max_error"] <= 1e-5
    assert results["dit_vs_reference_relative_error"] <= 1e-5
    # A bf16 model stays bf16 through the exchange and agrees with its single-rank run to bf16 rounding.
    assert results["bf16_dit_relative_error"] <= 2e-2
    # FSDP: each rank holds half of the blocks' weights and computes the same outputs.
    assert results["dit_fsdp_local_fraction"] == pytest.approx(0.5, abs=0.01)
    assert results["dit_fsdp_max_error"] <= 1e-5 and results["dit_fsdp_sp_max_error"] <= 1e-5
    assert results["t5_fsdp_max_error"] <= 1e-5


@pytest.mark.slow
def test_two_gloo_ranks_render_the_frames_of_one_rank(tmp_path):
    """The engine's own wiring (engine.serve.build_pipeline with --ulysses_size 2: the DiT's tokens and the VAE's
    rows split over the ranks) on the tiny preset: the frames handed to the encoder equal a one-rank render."""
    report = tmp_path / "report.json"
    run = torchrun(Path(__file__), 2, str(report), "pipeline", timeout_s=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(report.read_text())
    assert results["frames"] > 0 and results["ulysses_calls"] > 0 and results["vae_bands"] == 2
    assert results["max_error"] <= 1e-5


def _render_main(report_path: str) -> None:
    from PIL import Image

    import engine.pipeline as pipeline_module
    from engine.models.attention import register_attention_backend
    from engine.parallel.groups import ParallelConfig, destroy_groups, init_groups
    from engine.parallel.sequence import ULYSSES_BACKEND
    from engine.serve import ServeOptions, build_pipeline
    from engine.stages.mux import Mp4Writer
    from engine.stages.render import DiTVelocity
    from storage.contract import Box, Inputs, JobSpec, Line, MediaRef, RenderSettings, Requester
    from storage.settings import Settings

    torch.set_num_threads(1)
    groups = init_groups(collective_timeout_s=300)
    options = ServeOptions(
        config_path=None, preset="tiny", weights_dir=None, once=True, parallel=ParallelConfig(ulysses_size=2),
        frame_num=None, sample_shift=None, offload_model=False, time_limit_s=None, worker_name=None,
    )  # fmt: skip
    pipeline = build_pipeline(options, Settings(), groups)
    pieces: dict[Path, list[np.ndarray]] = {}  # the frames handed to each MP4 writer
    add = Mp4Writer.add
    Mp4Writer.add = lambda writer, video: pieces.setdefault(writer.path, []).append(video.copy()) or add(writer, video)
    calls = []
    ulysses = pipeline.make_velocity(pipeline.models.dit, None).dit.ulysses
    register_attention_backend(ULYSSES_BACKEND, lambda *qkv: calls.append(1) or ulysses(*qkv))

    work = Path(report_path).parent
    Image.new("RGB", (640, 640), (90, 110, 140)).save(work / f"frame{groups.rank}.png")
    media = {"size_bytes": 1, "sha256": "0" * 64}
    spec = JobSpec(
        requester=Requester(platform="cli", user_id="1", chat_id="1"),
        inputs=Inputs(
            photo_a=MediaRef(role="photo_a", **media), photo_b=MediaRef(role="photo_b", **media),
            frame=MediaRef(role="frame", **media), box_a=Box(x0=20, y0=80, x1=300, y1=640),
            box_b=Box(x0=340, y0=80, x1=620, y1=640),
            dialogue=(Line(speaker="A", text="Hello there."), Line(speaker="B", text="Hi!")),
        ),
        render=RenderSettings(quality="480p", steps=3, seed=5),
    )  # fmt: skip

    def render(tag: str) -> None:
        request = pipeline_module.RenderRequest(spec=spec, frame_path=work / f"frame{groups.rank}.png",
                                                work_dir=work / f"{tag}{groups.rank}")  # fmt: skip
        pipeline.render(request)

    render("parallel")
    parallel_calls = len(calls)
    vae_bands = pipeline.models.vae.row_bands.count if pipeline.models.vae.row_bands else 1
    if groups.rank == 0:  # rank 0 alone, with the unsplit DiT and VAE
        pipeline.make_velocity = DiTVelocity
        pipeline.models.vae.row_bands = None
        for block in pipeline.models.dit.blocks:
            block.self_attn.attention_backend = "sdpa"
        render("single")
    if groups.rank == 0:
        frames = [np.concatenate(video) for video in pieces.values()]
        error = float(np.abs(frames[0].astype(np.float64) - frames[1].astype(np.float64)).max())
        results = {"frames": int(frames[0].shape[0]), "ulysses_calls": parallel_calls, "max_error": error,
                   "vae_bands": vae_bands}  # fmt: skip
        Path(report_path).write_text(json.dumps(results))
    destroy_groups(groups)


def _rank_main(report_path: str) -> None:
    from safetensors.torch import load_file

    from engine.models import DiTConfig, MultiTalkDiT
    from engine.models.attention import attention, register_attention_backend
    from engine.models.t5 import T5Config, UMT5TextEncoder
    from engine.parallel.fsdp import dit_blocks, shard_blocks, t5_blocks
    from engine.parallel.groups import destroy_groups, init_groups
    from engine.parallel.sequence import ULYSSES_BACKEND, SequenceParallelDiT, UlyssesAttention

    groups = init_groups(collective_timeout_s=120)
    rank, world = groups.rank, groups.world_size
    results: dict[str, float] = {"world_size": world}

    generator = torch.Generator().manual_seed(0)
    sizes = split_sizes(37, world)
    start = sum(sizes[:rank])
    ulysses = UlyssesAttention(groups.world, local_backend="math")
    ulysses.sizes = sizes
    errors = []
    for batch, token_major in ((2, False), (1, False), (1, True)):  # the layouts and batch sizes take other paths
        q, k, v = (torch.randn(batch, 37, 4, 16, generator=generator) for _ in range(3))
        q, k, v = (t.transpose(1, 2) if token_major else t.transpose(1, 2).contiguous() for t in (q, k, v))
        local = ulysses(*(t[:, :, start : start + sizes[rank]] for t in (q, k, v)))
        whole = attention(q, k, v, backend="math")[:, :, start : start + sizes[rank]]
        errors.append((local - whole).abs().max().item())
    results["ulysses_attention_max_error"] = max(errors)

    inputs = load_file(FIXTURES / "dit" / "forward_two_speakers.safetensors")
    args = [inputs[key] for key in
            ("latents", "timestep", "text_states", "image_states", "cond_latents", "audio", "region_masks")]
    dit = MultiTalkDiT(DiTConfig.tiny())
    dit.load_state_dict(load_file(FIXTURES / "dit" / "reference_weights.safetensors"), strict=True)
    dit.eval()
    with torch.no_grad():
        one_rank = dit(*args)
        parallel = SequenceParallelDiT(dit, groups.world)
        calls = []
        register_attention_backend(ULYSSES_BACKEND, lambda *qkv: calls.append(1) or parallel.ulysses(*qkv))
        many_ranks = parallel(*args)
        results["ulysses_calls"] = len(calls)
        expected = inputs["velocity"]
        results["dit_vs_one_rank_max_error"] = (many_ranks - one_rank).abs().max().item()
        results["dit_vs_reference_relative_error"] = ((many_ranks - expected).norm() / expected.norm()).item()

        bf16 = MultiTalkDiT(DiTConfig.tiny())
        bf16.load_state_dict(load_file(FIXTURES / "dit" / "reference_weights.safetensors"), strict=True)
        bf16 = bf16.to(torch.bfloat16).eval()
        bf16_one_rank = bf16(*args)
        bf16_many = SequenceParallelDiT(bf16, groups.world)(*args)
        results["bf16_dit_relative_error"] = ((bf16_many - bf16_one_rank).norm() / bf16_one_rank.norm()).item()

        # --dit_fsdp: blocks sharded over the ranks, with and without sequence parallelism.
        sharded = MultiTalkDiT(DiTConfig.tiny())
        sharded.load_state_dict(load_file(FIXTURES / "dit" / "reference_weights.safetensors"), strict=True)
        sharded.eval()
        shard_blocks(dit_blocks(sharded), groups)
        local_numel = sum(p.to_local().numel() for p in sharded.blocks.parameters())
        results["dit_fsdp_local_fraction"] = local_numel / sum(p.numel() for p in dit.blocks.parameters())
        results["dit_fsdp_max_error"] = (sharded(*args) - one_rank).abs().max().item()
        sharded_many = SequenceParallelDiT(sharded, groups.world)(*args)
        results["dit_fsdp_sp_max_error"] = (sharded_many - one_rank).abs().max().item()

        # --t5_fsdp: the text encoder's layers sharded.
        torch.manual_seed(0)  # the same random weights on every rank
        t5 = UMT5TextEncoder(T5Config.tiny()).eval()
        ids = torch.randint(3, T5Config.tiny().vocab_size, (2, 12), generator=generator)
        mask = torch.ones_like(ids)
        whole_t5 = t5(ids, mask)
        shard_blocks(t5_blocks(t5), groups)
        results["t5_fsdp_max_error"] = (t5(ids, mask) - whole_t5).abs().max().item()

    if rank == 0:
        Path(report_path).write_text(json.dumps(results))
    destroy_groups(groups)


if __name__ == "__main__":
    if sys.argv[2:] == ["pipeline"]:
        _render_main(sys.argv[1])
    else:
        _rank_main(sys.argv[1])
