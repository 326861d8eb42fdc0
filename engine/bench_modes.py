"""The fast modes' benchmark: each mode's speed and its deviation from the exact result, same seed, same inputs.

    python -m engine.bench_modes --size 640 --steps 10 --modes exact teacache fp8 fp8+teacache distilled \
        --compile --attention cudnn --out modes.json --markdown docs/benchmarks.md
    torchrun --nproc_per_node=4 -m engine.bench_modes …      # Ulysses sequence parallelism over 4 GPUs
    python -m engine.bench_modes --tiny --size 64 --frames 5   # the tiny DiT on the CPU (plumbing only)

Every mode runs the real sampler (engine.sampling's `sample_chunk` with engine.guidance and the render stage's
`DiTVelocity`, as `render_video` drives them for one chunk) for `--steps` steps from the same noise, conditioning
and random weights (engine.bench's full-size model and inputs), and reports the median seconds per step, the whole
denoise time, TeaCache's computed/skipped block passes, peak memory, and the relative error of the final latent
against the exact mode, ‖x − x_exact‖ / ‖x_exact‖.

Modes: `exact` (3 guidance passes, model dtype), `teacache` (the reference's TeaCache, polynomial of the size
bucket, `--teacache-threshold`), `fp8` (engine.quantize's FP8 linears, exact sampler), `fp8attn` (every attention
on `--fp8-attention`, FlashAttention-3 on float8 inputs by default), `fp8+fp8attn`, `fp8+teacache`, `distilled`
(2 passes: text scale 1, `--distilled-steps` steps, the bucket's shift like every mode where the LoRA recipes use 2;
compared with the exact sampler at the same step count, which this benchmark then also runs), `fp8+distilled`. A
mode joins its switches with "+". The FP8 swap is irreversible, so the model-dtype modes run first.

Random weights need one correction for TeaCache to mean anything: a random time MLP maps neighbouring timesteps to
unrelated modulation vectors (the sinusoid's fast frequencies dominate; the relative change of e0 per step is ~0.7
even at 40 steps), so TeaCache would never skip. A trained model's modulation drifts with t. `slow_time_response`
zeroes the time MLP's inputs from the faster half of the frequencies, which brings the change per step to ~0.02 at
40 steps (~0.2-1 at 10), the range TeaCache's polynomial was fitted on; every mode runs this same model. The
polynomial is fitted for the reference's 40 steps: at 10 steps TeaCache rightly skips little or nothing.

With random weights the deviation is a rough proxy: a random network is not a trained denoiser, so it neither
damps nor amplifies errors the way the checkpoint does, and it says nothing of visual or lip-sync quality. For
`distilled` without its LoRA the deviation only shows that the sampler differs; read its speed, not its error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from engine.acceleration import compile_blocks, is_compiled
from engine.bench import _commit, _inputs, _max_over_ranks, build_model, gpu_name, insert_table_rows
from engine.cache import TeaCache
from engine.guidance import Guidance, GuidanceConfig, branch_conditions
from engine.models.attention import attention_backends
from engine.models.dit import DiTConfig, MultiTalkDiT
from engine.parallel.groups import ProcessGroups, joined_groups
from engine.parallel.sequence import SequenceParallelDiT
from engine.quantize import quantize_dit_fp8, relative_error
from engine.sampling import FlowMatchEulerScheduler, default_shift, initial_noise, make_generator, sample_chunk
from engine.stages.render import DiTVelocity

MODES = ("exact", "teacache", "fp8", "fp8attn", "fp8+fp8attn", "fp8+teacache", "distilled", "fp8+distilled")
FP8_ATTENTION = "fa3_fp8"
_BACKEND_ATTRIBUTES = ("attention_backend", "local_attention_backend", "local_backend")  # the DiT's, UlyssesAttention's
SEED = 42
EXACT_GUIDANCE = GuidanceConfig()  # the reference CLI's text 5, audio 4: 3 passes
DISTILLED_GUIDANCE = GuidanceConfig(text_scale=1.0)  # 2 passes, as the step-distilled LoRAs run

NOTES = (
    "deviation = relative L2 error of the final latent vs the exact mode (same seed, inputs, random weights); "
    "random weights make it a rough proxy, not the quality with the real checkpoint",
    "the random time MLP is restricted to the sinusoid's slower half so that the modulation drifts with t as a "
    "trained model's does (TeaCache's input); TeaCache's polynomial is fitted for 40 steps and skips little at 10",
    "distilled runs without its LoRA here: its deviation (vs the exact sampler at the same step count) only shows "
    "that the sampler differs; its speed is the result",
)


def slow_time_response(model: MultiTalkDiT) -> None:
    """Zero the time MLP's weights on the faster half of the sinusoid's frequencies (see the module docstring)."""
    half = model.config.freq_dim // 2
    weight = model.time_embedding[0].weight  # [dim, freq_dim]: cos then sin columns, each fastest frequency first
    with torch.no_grad():
        weight[:, : half // 2] = 0
        weight[:, half : half + half // 2] = 0


@dataclass(frozen=True)
class ModeResult:
    mode: str
    steps: int
    passes: int
    step_s_median: float
    denoise_s: float
    blocks_computed: int  # block passes run (steps × passes without TeaCache)
    blocks_skipped: int  # block passes TeaCache replaced by a cached residual
    peak_memory_gib: float
    relative_error: float  # vs `reference`
    reference: str


@dataclass(frozen=True)
class SamplerRun:
    latent: torch.Tensor  # [16, T, h, w] fp32, the final latent
    step_s: list[float]
    teacache: TeaCache | None


class ModeBench:
    """One model, one set of inputs; `run` denoises them from the same seed with a given sampler setting."""

    def __init__(self, runner: MultiTalkDiT | SequenceParallelDiT, *, size: int, frames: int, warmup: int) -> None:
        self.runner = runner
        self.device = next(runner.parameters()).device
        self.bucket = "720p" if size > 640 else "480p"  # TeaCache polynomial and shift, as the job's size bucket
        self.shift = default_shift(self.bucket)
        self.warmup = warmup
        inputs = _inputs(runner.config, size, frames, self.device, runner.dtype)
        self.latent_shape = tuple(inputs.pop("latents").shape[1:])
        self.cond = inputs
        g = torch.Generator(device=self.device).manual_seed(2)
        # A real negative prompt embeds to nonzero states; random ones of the same shape stand in for it.
        negative = torch.randn(inputs["text_states"].shape, device=self.device, generator=g)
        self.negative = negative.to(inputs["text_states"].dtype)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, guidance: GuidanceConfig, steps: int, teacache_threshold: float | None = None) -> SamplerRun:
        conditions = branch_conditions(guidance, self.cond, negative_text=self.negative)
        if self.warmup:  # first calls of each input shape: compilation, cuDNN plans, allocator growth
            self._sample(DiTVelocity(self.runner), guidance, conditions, self.warmup, seed=SEED + 1)
        teacache = TeaCache(self.bucket, teacache_threshold) if teacache_threshold is not None else None
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        stamps: list[float] = []

        def on_step(done: int, total: int) -> None:
            self._sync()
            stamps.append(time.perf_counter())

        self._sync()
        stamps.append(time.perf_counter())
        latent = self._sample(DiTVelocity(self.runner, teacache), guidance, conditions, steps, SEED, on_step)
        return SamplerRun(latent, [b - a for a, b in zip(stamps, stamps[1:])], teacache)

    def _sample(
        self,
        model: DiTVelocity,
        guidance: GuidanceConfig,
        conditions: dict,
        steps: int,
        seed: int,
        on_step: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        generator = make_generator(seed, self.device)
        with torch.inference_mode():
            return sample_chunk(
                model,
                initial_noise(self.latent_shape, generator),
                FlowMatchEulerScheduler(steps, self.shift, self.device),
                Guidance(guidance),
                conditions,
                generator=generator,
                on_step=on_step,
            )

    def peak_memory_gib(self) -> float:
        if self.device.type != "cuda":
            return 0.0
        return round(_max_over_ranks(torch.cuda.max_memory_allocated(self.device)) / 2**30, 2)


@contextmanager
def attention_swapped(runner: MultiTalkDiT | SequenceParallelDiT, backend: str) -> Iterator[None]:
    """Inside, every attention of `runner` that ran on the model's configured backend runs on `backend` (Ulysses'
    exchange stays; its local kernel changes). Compiled blocks recompile for it."""
    exact = runner.config.attention_backend
    holders = [*runner.modules(), getattr(runner, "ulysses", None)]
    swapped = [(holder, name) for holder in holders for name in _BACKEND_ATTRIBUTES
               if getattr(holder, name, None) == exact]  # fmt: skip
    for holder, name in swapped:
        setattr(holder, name, backend)
    try:
        yield
    finally:
        for holder, name in swapped:
            setattr(holder, name, exact)


def _result(bench: ModeBench, mode: str, run: SamplerRun, guidance: GuidanceConfig, reference: SamplerRun,
            reference_name: str) -> ModeResult:
    steps, passes = len(run.step_s), len(guidance.branches)
    computed = sum(run.teacache.computed.values()) if run.teacache else steps * passes
    skipped = sum(run.teacache.skipped.values()) if run.teacache else 0
    return ModeResult(
        mode=mode,
        steps=steps,
        passes=passes,
        step_s_median=round(statistics.median(run.step_s), 4),
        denoise_s=round(sum(run.step_s), 3),
        blocks_computed=computed,
        blocks_skipped=skipped,
        peak_memory_gib=bench.peak_memory_gib(),
        relative_error=relative_error(run.latent, reference.latent),
        reference=reference_name,
    )


def bench_modes(
    model: MultiTalkDiT,
    runner: MultiTalkDiT | SequenceParallelDiT,
    modes: Sequence[str],
    *,
    size: int,
    frames: int,
    steps: int,
    distilled_steps: int = 4,
    teacache_threshold: float = 0.2,
    fp8_attention: str = FP8_ATTENTION,
    warmup: int = 1,
) -> list[ModeResult]:
    """Run every mode in `modes` (and the exact references they need) -> one result per mode, exact first.

    A mode name joins its switches with "+" (`fp8+teacache`). `runner` is `model` itself or the sequence-parallel
    wrapper around it; every rank calls this. FP8 modes quantize `model` in place, so they run after every
    model-dtype run (the exact references included) and `model` is FP8 afterwards.
    """
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; known: {', '.join(MODES)}")
    bench = ModeBench(runner, size=size, frames=frames, warmup=warmup)
    references = {steps: bench.run(EXACT_GUIDANCE, steps)}
    if any("distilled" in mode for mode in modes) and distilled_steps not in references:
        references[distilled_steps] = bench.run(EXACT_GUIDANCE, distilled_steps)
    results: dict[str, ModeResult] = {}
    is_quantized = False
    for mode in sorted(dict.fromkeys(["exact", *modes]), key=lambda m: "fp8" in m.split("+")):  # bf16 GEMMs first
        switches = set(mode.split("+"))
        if "fp8" in switches and not is_quantized:
            quantize_dit_fp8(model)
            is_quantized = True
        is_distilled = "distilled" in switches
        guidance = DISTILLED_GUIDANCE if is_distilled else EXACT_GUIDANCE
        mode_steps = distilled_steps if is_distilled else steps
        reference = references[mode_steps]
        threshold = teacache_threshold if "teacache" in switches else None
        if mode == "exact":
            run = reference
        else:
            with attention_swapped(runner, fp8_attention) if "fp8attn" in switches else nullcontext():
                run = bench.run(guidance, mode_steps, threshold)
        results[mode] = _result(bench, mode, run, guidance, reference, f"exact, {mode_steps} steps")
    return [results[mode] for mode in dict.fromkeys(["exact", *modes])]


MARKDOWN_SECTION = "## Fast modes (`python -m engine.bench_modes`)"
MARKDOWN_INTRO = (
    "One row per mode: the real sampler for the given steps from one seed, the full-size DiT with random weights, "
    "two speakers (the note says when fewer blocks ran). s/step is the median step, denoise s the whole loop; a "
    "block pass is one run of all blocks for one guidance branch (TeaCache skips some); deviation = "
    "‖x − x_exact‖ / ‖x_exact‖ of the final latent against the exact mode at the same step count. "
    "With random weights the deviation is a rough proxy, not the quality with the real checkpoint; "
    "`distilled` runs without its LoRA, so only its speed is meaningful. The random time MLP sees only the slower "
    "half of the timestep frequencies, so that TeaCache's input drifts as a trained model's does."
)
MARKDOWN_HEADER = (
    "| date | commit | GPU | GPUs | size | frames | mode | steps | passes | attention | s/step | denoise s "
    "| block passes run / skipped | peak GiB | deviation | note |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def append_markdown(
    path: Path, results: Sequence[ModeResult], *, size: int, frames: int, gpus: int, attention: str, note: str
) -> None:
    """Add one row per result to the fast-modes table of `path`, creating the section (or file) when missing.

    The table need not be at the end of the file: rows go right after its last row.
    """
    today, commit, gpu = dt.date.today().isoformat(), _commit(), gpu_name()
    rows = [
        f"| {today} | {commit} | {gpu} | {gpus} | {size}×{size} | {frames} | {r.mode} | {r.steps} | {r.passes} "
        f"| {attention} | {r.step_s_median:.2f} | {r.denoise_s:.1f} | {r.blocks_computed} / {r.blocks_skipped} "
        f"| {r.peak_memory_gib:.1f} | {r.relative_error:.2e} | {note} |"
        for r in results
    ]
    insert_table_rows(path, rows, header=MARKDOWN_HEADER, title=MARKDOWN_SECTION, intro=MARKDOWN_INTRO)


def main() -> None:
    parser = argparse.ArgumentParser(description="Speed and deviation of the DiT's fast modes (same seed, inputs).")
    parser.add_argument("--size", type=int, default=640, help="square video side in pixels")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--distilled-steps", type=int, default=4)
    parser.add_argument("--teacache-threshold", type=float, default=0.2, help="the reference's --teacache_thresh")
    parser.add_argument("--warmup", type=int, default=1, help="untimed sampler steps before each mode")
    parser.add_argument("--attention", default="sdpa", help=f"one of the registered backends: {attention_backends()}")
    parser.add_argument("--fp8-attention", default=FP8_ATTENTION, help="the fp8attn modes' attention backend")
    parser.add_argument("--layers", type=int, default=None, help="fewer blocks (quick checks)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each block (engine.acceleration)")
    parser.add_argument("--tiny", action="store_true", help="the tiny DiT in fp32 on the CPU (plumbing checks)")
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    parser.add_argument("--markdown", type=Path, default=None, help="append rows to this Markdown file's table")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("engine.bench_modes measures GPUs: no CUDA device is visible (--tiny runs on the CPU)")
    with joined_groups() as groups:
        _measure_and_report(args, groups)


def _measure_and_report(args: argparse.Namespace, groups: ProcessGroups) -> None:
    device = torch.device("cpu") if args.tiny else groups.device
    config = replace(DiTConfig.tiny() if args.tiny else DiTConfig(), attention_backend=args.attention)
    if args.layers:
        config = replace(config, num_layers=args.layers)
    model = build_model(config, device, torch.float32 if args.tiny else torch.bfloat16)
    slow_time_response(model)
    if args.compile:
        compile_blocks(model)
    runner = SequenceParallelDiT(model, groups.world) if groups.is_distributed else model
    results = bench_modes(
        model, runner, args.modes, size=args.size, frames=args.frames, steps=args.steps,
        distilled_steps=args.distilled_steps, teacache_threshold=args.teacache_threshold,
        fp8_attention=args.fp8_attention, warmup=args.warmup,
    )
    if not groups.is_leader:
        return
    for result in results:
        print(json.dumps(asdict(result)))
    attention = f"{args.attention}{' +compile' if is_compiled(model) else ''}"
    report = {
        "gpu": gpu_name() if not args.tiny else "cpu (tiny DiT)",
        "gpus": groups.world_size,
        "torch": torch.__version__,
        "size": args.size,
        "frames": args.frames,
        "attention": attention,
        "layers": config.num_layers,
        "teacache_threshold": args.teacache_threshold,
        "notes": NOTES,
        "results": [asdict(r) for r in results],
    }
    print("\n".join(f"note: {note}" for note in NOTES))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    if args.markdown:
        append_markdown(
            args.markdown, results, size=args.size, frames=args.frames, gpus=groups.world_size,
            attention=attention, note=args.note,
        )


if __name__ == "__main__":
    main()
