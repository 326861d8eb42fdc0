"""The engine benchmark: seconds per denoising step of the full-size MultiTalk DiT, peak memory and MFU.

    python -m engine.bench --sizes 640 960 --frames 81 --steps 3 --compile --attention cudnn --markdown docs/benchmarks.md
    torchrun --nproc_per_node=4 -m engine.bench …      # Ulysses sequence parallelism over 4 GPUs

Random weights (the speed is the same as with the checkpoint); two speakers; the reference's 3 guidance passes
per step (or 2, or 1 with `--passes`). The FLOP model is performance.md §2.2; MFU is against the GPU's dense
bf16 peak. Results go to JSON and, with `--markdown`, as one row per size appended to docs/benchmarks.md with the
GPU model, GPU count, date and commit (`DUET_COMMIT` or `git rev-parse`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist

from engine.acceleration import compile_blocks, is_compiled
from engine.guidance import GuidanceConfig, branch_conditions
from engine.models.attention import attention_backends
from engine.models.dit import DiTConfig, MultiTalkDiT
from engine.parallel.groups import ProcessGroups, joined_groups
from engine.parallel.sequence import SequenceParallelDiT
from engine.quantize import FP8Linear, quantize_dit_fp8

PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


def dit_flops_per_forward(config: DiTConfig, tokens: int, first_frame_tokens: int, speakers: int = 2) -> float:
    """Multiply-adds × 2 of one forward (performance.md §2.2), projections, attention and FFN of every block."""
    d, f = config.dim, config.ffn_dim
    audio_tokens = config.audio.context_tokens * speakers
    context_tokens = config.text_len + config.image_tokens
    per_block = (
        16 * tokens * d * d  # self-attn QKVO, cross-attn Q/O, audio q/proj
        + 4 * tokens * d * f  # FFN
        + 4 * tokens * tokens * d  # self-attention QK^T and PV
        + 4 * tokens * context_tokens * d  # text + image cross-attention
        + 4 * tokens * audio_tokens * d  # audio cross-attention
        + 2 * tokens * first_frame_tokens * d  # speaker reference map
    )
    return per_block * config.num_layers


@dataclass(frozen=True)
class StepResult:
    size: int
    frames: int
    tokens: int
    passes: int
    attention: str
    compiled: bool
    fp8: bool  # the blocks' linears in float8 (engine.quantize)
    step_s_median: float
    step_s_all: tuple[float, ...]
    forward_pflop: float
    achieved_tflops: float
    mfu: float | None
    peak_memory_gib: float


def _random_weights(model: torch.nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif param.ndim == 1:  # norm scales
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)


def build_model(config: DiTConfig, device: torch.device, dtype: torch.dtype) -> MultiTalkDiT:
    """The full-size DiT straight on the GPU in `dtype` (never a full fp32 copy), random weights."""
    with torch.device("meta"):
        model = MultiTalkDiT(config).to(dtype)
    model = model.to_empty(device=device)
    _random_weights(model, torch.Generator(device=device).manual_seed(0))
    return model.eval().requires_grad_(False)


def _inputs(config: DiTConfig, size: int, frames: int, device: torch.device, dtype: torch.dtype) -> dict:
    latent_t, latent_hw = (frames - 1) // 4 + 1, size // 8
    g = torch.Generator(device=device).manual_seed(1)
    # [3, h, w]: speaker 1 left, speaker 2 right, background a thin strip
    masks = torch.zeros(3, latent_hw, latent_hw, device=device)
    masks[0, :, : latent_hw // 2] = 1
    masks[1, :, latent_hw // 2 :] = 1
    masks[2] = 1 - masks[0] - masks[1]
    masks[0, :, :2] = 0  # leave a little background, as composed frames do
    masks[2, :, :2] = 1
    audio_cfg = config.audio
    return {
        "latents": torch.randn(1, 16, latent_t, latent_hw, latent_hw, device=device, generator=g),
        "text_states": torch.randn(1, config.text_len, config.text_dim, device=device, generator=g).to(dtype),
        "image_states": torch.randn(1, config.image_tokens, config.image_dim, device=device, generator=g).to(dtype),
        "cond_latents": torch.randn(1, 20, latent_t, latent_hw, latent_hw, device=device, generator=g),
        "audio": torch.randn(
            2, frames, audio_cfg.window, audio_cfg.feature_layers, audio_cfg.feature_dim, device=device, generator=g
        ).to(dtype),
        "region_masks": masks,
    }


def bench_steps(
    model: MultiTalkDiT | SequenceParallelDiT,
    *,
    size: int,
    frames: int,
    passes: int,
    steps: int,
    warmup: int,
    peak_tflops: float | None,
    gpus: int = 1,
) -> StepResult:
    """Time `steps` denoising steps (after `warmup`); with a sequence-parallel model every rank runs this."""
    config, device, dtype = model.config, next(model.parameters()).device, model.dtype
    inputs = _inputs(config, size, frames, device, dtype)
    negative = torch.zeros_like(inputs["text_states"])
    guidance = GuidanceConfig(text_scale=5.0 if passes == 3 else 1.0, audio_scale=4.0)
    branches = branch_conditions(guidance, {k: v for k, v in inputs.items() if k != "latents"}, negative_text=negative)
    names = list(branches)[:passes]  # evaluation order: cond first
    latents = inputs["latents"]
    timestep = torch.tensor([999.0], device=device)
    on_gpu = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if on_gpu else (lambda: None)
    timings = []
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        for index in range(warmup + steps):
            sync()
            started = time.perf_counter()
            for name in names:
                model(latents, timestep, **branches[name])
            sync()
            if index >= warmup:
                timings.append(time.perf_counter() - started)
    grid = (latents.shape[2], latents.shape[3] // 2, latents.shape[4] // 2)
    tokens = grid[0] * grid[1] * grid[2]
    flops = dit_flops_per_forward(config, tokens, grid[1] * grid[2])
    median = statistics.median(timings)
    achieved = flops * passes / median / 1e12 / gpus  # per GPU, so MFU compares across GPU counts
    return StepResult(
        size=size,
        frames=frames,
        tokens=tokens,
        passes=passes,
        attention=config.attention_backend,
        compiled=is_compiled(model),
        fp8=any(isinstance(module, FP8Linear) for module in model.modules()),
        step_s_median=round(median, 3),
        step_s_all=tuple(round(t, 3) for t in timings),
        forward_pflop=round(flops / 1e15, 3),
        achieved_tflops=round(achieved, 1),
        mfu=round(achieved / peak_tflops, 3) if peak_tflops else None,
        peak_memory_gib=round(_max_over_ranks(torch.cuda.max_memory_allocated(device)) / 2**30, 2) if on_gpu else 0.0,
    )


KERNEL_CLASSES = (
    ("communication", ("nccl",)),  # on several ranks: all-to-alls and gathers, and the time spent waiting in them
    ("attention", ("fmha", "flash", "attn", "cudnn", "sdpa")),
    ("matmul", ("gemm", "nvjet", "xmma", "cutlass", "matmul", "sm90")),
    ("conv", ("conv",)),
    ("norm/elementwise", ("elementwise", "vectorized", "reduce", "norm", "unrolled", "softmax", "cat", "copy")),
)


def kernel_class(name: str) -> str:
    lowered = name.lower()
    return next((label for label, keys in KERNEL_CLASSES if any(key in lowered for key in keys)), "other")


def profile_forward(
    model: MultiTalkDiT, *, size: int, frames: int, top: int = 25, runner: torch.nn.Module | None = None
) -> dict:
    """One forward of `runner` (default: `model`; a `SequenceParallelDiT` over it on several ranks) under the
    profiler: GPU time per kernel class and the most expensive kernels, on this rank."""
    from torch.profiler import ProfilerActivity, profile

    device, dtype = model.patch_embedding.weight.device, model.dtype
    inputs = _inputs(model.config, size, frames, device, dtype)
    timestep = torch.tensor([999.0], device=device)
    runner = runner or model
    with torch.inference_mode():
        latents = inputs.pop("latents")
        runner(latents, timestep, **inputs)  # warm-up
        torch.cuda.synchronize(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            runner(latents, timestep, **inputs)
            torch.cuda.synchronize(device)
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA" or getattr(e, "self_device_time_total", 0)]
    by_class: dict[str, float] = {}
    for event in kernels:
        by_class[kernel_class(event.key)] = by_class.get(kernel_class(event.key), 0.0) + event.self_device_time_total
    total = sum(by_class.values()) or 1.0
    ranked = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:top]
    return {
        "size": size,
        "layers": model.config.num_layers,
        "gpu_ms_total": round(total / 1000, 1),
        "share_by_class": {k: round(v / total, 3) for k, v in sorted(by_class.items(), key=lambda kv: -kv[1])},
        "top_kernels": [
            {"kernel": e.key[:120], "class": kernel_class(e.key), "ms": round(e.self_device_time_total / 1000, 2), "calls": e.count}
            for e in ranked
        ],
    }


def _max_over_ranks(value: float) -> float:
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device="cuda" if torch.cuda.is_available() else "cpu")
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.item()


def gpu_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def _peak(name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def _commit() -> str:
    """The commit measured, "+dirty" when the tracked files differ from it (a copied tree whose .git is older)."""
    if os.environ.get("DUET_COMMIT"):
        return os.environ["DUET_COMMIT"][:12]
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], capture_output=True).returncode == 1
    except OSError:
        return "unknown"
    return f"{head}+dirty" if head and dirty else head or "unknown"


def insert_table_rows(path: Path, rows: Sequence[str], *, header: str, title: str, intro: str) -> None:
    """Put `rows` right after the last row of the table whose first header line is `header`'s, wherever it is in
    the file (docs/benchmarks.md holds several tables, with text between them); a missing table starts at the end
    of the file (or a new file), under `title` and `intro`. Each benchmark writes its own table through this."""
    header_lines = header.strip("\n").splitlines()
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else ["# Engine benchmarks"]
    if header_lines[0] not in lines:
        while lines and not lines[-1]:
            lines.pop()
        lines += ["", title, "", intro, "", *header_lines]
    end = lines.index(header_lines[0]) + 1
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    lines[end:end] = rows
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


STEP_TABLE_HEADER = (
    "| date | commit | GPU | GPUs | size | frames | passes | attention | s/step | TFLOP/s | MFU | peak GiB | note |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def append_markdown(path: Path, results: list[StepResult], *, gpus: int, note: str) -> None:
    today, commit, gpu = dt.date.today().isoformat(), _commit(), gpu_name()
    rows = []
    for r in results:
        mfu = f"{r.mfu:.0%}" if r.mfu is not None else "-"
        rows.append(
            f"| {today} | {commit} | {gpu} | {gpus} | {r.size}×{r.size} | {r.frames} | {r.passes} | {r.attention}{' +compile' if r.compiled else ''}"
            f"{' +fp8' if r.fp8 else ''} "
            f"| {r.step_s_median:.2f} | {r.achieved_tflops:.0f} | {mfu} | {r.peak_memory_gib:.1f} | {note} |"
        )
    insert_table_rows(path, rows, header=STEP_TABLE_HEADER, title="## Seconds per step (`python -m engine.bench`)",
                      intro="Rows appended by `python -m engine.bench`.")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description="Seconds per denoising step of the full-size MultiTalk DiT.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[640, 960])
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--passes", type=int, choices=(1, 2, 3), default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--attention", default="sdpa", help=f"one of the registered backends: {attention_backends()}")
    parser.add_argument("--layers", type=int, default=None, help="fewer blocks (quick checks; MFU stays comparable)")
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    parser.add_argument("--markdown", type=Path, default=None, help="append rows to this Markdown table")
    parser.add_argument("--note", default="")
    parser.add_argument("--profile", action="store_true",
                        help="profile one forward per size instead of timing steps (every rank under torchrun)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each block (engine.acceleration)")
    parser.add_argument("--fp8", action="store_true", help="the blocks' linears in float8 (engine.quantize)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("engine.bench measures GPUs: no CUDA device is visible")
    with joined_groups() as groups:  # under torchrun: one rank per GPU, Ulysses over all of them
        _measure_and_report(args, groups)


def _measure_and_report(args: argparse.Namespace, groups: ProcessGroups) -> None:
    device, leader = groups.device, groups.is_leader
    config = replace(DiTConfig(), attention_backend=args.attention)
    if args.layers:
        config = replace(config, num_layers=args.layers)
    started = time.perf_counter()
    model = build_model(config, device, torch.bfloat16)
    if leader:
        print(f"built {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters in {time.perf_counter() - started:.1f} s")
    if args.fp8:
        quantize_dit_fp8(model)
    if args.compile:
        compile_blocks(model)
    runner = SequenceParallelDiT(model, groups.world) if groups.is_distributed else model
    peak = _peak(gpu_name())
    if args.profile:  # on several ranks, every rank's breakdown (rank 0 writes them all)
        report = [profile_forward(model, size=size, frames=args.frames, runner=runner) for size in args.sizes]
        if groups.is_distributed:
            every: list = [None] * groups.world_size
            dist.all_gather_object(every, report, group=groups.control)
            report = [{**result, "rank": rank} for rank, results in enumerate(every) for result in results]
        if leader:
            print(json.dumps(report, indent=1))
            if args.out:
                args.out.write_text(json.dumps(report, indent=2))
        return
    results = []
    for size in args.sizes:
        result = bench_steps(
            runner, size=size, frames=args.frames, passes=args.passes, steps=args.steps, warmup=args.warmup,
            peak_tflops=peak, gpus=groups.world_size,
        )
        if leader:
            print(json.dumps(asdict(result)))
        results.append(result)
    if not leader:
        return
    gpus = groups.world_size
    report = {"gpu": gpu_name(), "gpus": gpus, "torch": torch.__version__, "results": [asdict(r) for r in results]}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    if args.markdown:
        append_markdown(args.markdown, results, gpus=gpus, note=args.note)


if __name__ == "__main__":
    main()
