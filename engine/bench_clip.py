"""The whole-clip benchmark: one 81-frame job through the service's own pipeline, every stage timed.

    python -m engine.bench_clip --preset full-random --size 960 --steps 40 --out clip.json --markdown docs/benchmarks.md
    torchrun --nproc_per_node=4 -m engine.bench_clip --preset full-random --size 960 --steps 40   # Ulysses x4
    python -m engine.bench_clip --preset tiny --steps 2 --warmup-steps 0     # the whole path on the CPU (plumbing)

What runs is what `engine.serve` runs: the pipeline comes from `engine.serve.build_pipeline` (Ulysses over every
rank under torchrun), the job from the shipped samples (bot/samples) through the chat bots' checks and composition
and into a throwaway queue (`bot.core.submit.prepare` and `enqueue`, as `duet demo` does), every rank renders it with
the serve loop's step gate. (A tool beside the engine: it imports bot.core, lazily; the engine itself does not.)
One thing differs, so that exactly one chunk renders: the dialogue is the samples'
opening exchange cut to about a clip of speech, and after TTS (timed as usual) the speech is cut or padded with
silence to exactly `--frames` / 25 s.

A warm-up job of `--warmup-steps` steps runs first (torch.compile, cuDNN's plans, the prompt cache), so that the
timed job shows the steady state; its timings are reported too (cold T5 and CLIP). Reported: seconds per stage (tts,
audio = wav2vec2, encode, render = the DiT's denoising, decode, mux) with the named parts of tts (g2p, kokoro) and
encode (frame, t5, clip, vae_encode), the wall time, the DiT's share of it, seconds per step, and every rank's peak
GPU memory over the timed job, models included, with rank 0's by stage (where the peak comes from). `--markdown`
appends a row to the whole-clip table of docs/benchmarks.md (created at the end of the file if missing), with
date, commit, GPU model and rank count.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch

from engine.acceleration import is_compiled
from engine.bench import _commit, gpu_name, insert_table_rows
from engine.parallel.control import ControlChannel
from engine.parallel.groups import ParallelConfig, joined_groups
from engine.serve import Assignment, ServeOptions, StepGate, build_pipeline, make_request
from engine.stages.clock import StageClock
from engine.stages.mux import VIDEO_FPS
from engine.stages.speech import Pauses, Speech
from engine.streaming import MOTION_FRAMES
from storage.contract import JobSpec, RenderSettings, Requester, Stage
from storage.settings import Settings, load_settings

QUALITY_BY_SIZE = {640: "480p", 960: "720p"}  # the square bucket of each quality
SEED = 42
GIB = 2**30
TABLE_TITLE = "## Whole clip (`python -m engine.bench_clip`)"
TABLE_HEADER = (
    "| date | commit | GPU | GPUs | preset | size | frames | steps | passes | mode | wall s | tts | audio | t5 | clip "
    "| vae enc | denoise | decode | mux | s/step | DiT share | peak GiB alloc / reserved | note |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)
TABLE_INTRO = (
    "Rows are appended by `python -m engine.bench_clip` (see its `--help`): one job of the sample photos and the "
    "opening of the sample script, its speech fitted to one clip, rendered by the service's own pipeline after a "
    "short warm-up job. Seconds per stage of the timed job (rank 0); t5, clip and vae enc are parts of the encode "
    "stage (t5 is 0 once the prompts are cached); denoise is the DiT's render stage; DiT share = denoise / wall. "
    "Peak memory is the highest rank's, models included."
)


@dataclass(frozen=True)
class JobTimings:
    """One job's wall time and its clock's readings (rank 0's)."""

    steps: int
    size: tuple[int, int]  # (height, width) of the video
    wall_s: float
    stages: dict[str, float]
    parts: dict[str, dict[str, float]]  # stage -> part -> seconds
    speech_s: float  # the speech TTS made, before it was fitted to the clip
    stage_memory: dict[str, dict[str, float]]  # stage -> this rank's peak GiB allocated / reserved (GPU only)

    @property
    def render_s(self) -> float:
        return self.stages.get(Stage.RENDER, 0.0)


# ---- the job ------------------------------------------------------------------------------------------------


def opening_exchange(script: str, seconds: float) -> str:
    """The script's first line of each speaker, both cut to as many words as fit `seconds` of speech by the bots'
    estimate (`bot.core.voices.SpeechRates`), with the engine's lead-in and tail silence taken off first."""
    from bot.core.script import parse_script
    from bot.core.voices import SpeechRates

    dialogue = parse_script(script)
    lines = [next(line for line in dialogue.lines if line.speaker == speaker) for speaker in ("A", "B")]
    lines.sort(key=lambda line: line.line_no)
    words = [line.text.split() for line in lines]
    budget = seconds - Pauses().lead_s - Pauses().tail_s
    count = max(len(w) for w in words)
    while count > 1 and SpeechRates().seconds([" ".join(w[:count]) for w in words]) > budget:
        count -= 1
    return "\n".join(f"{line.speaker}: {' '.join(w[:count])}" for line, w in zip(lines, words, strict=True))


def queue_sample_job(settings: Settings, work_dir: Path, *, size: int, frames: int) -> Assignment:
    """The sample job, checked, composed and queued like `duet demo` does, in a throwaway queue under `work_dir`."""
    from bot.core.submit import Draft, enqueue, prepare
    from bot.render import SAMPLES
    from storage.cli import run_action

    storage = settings.storage.model_copy(
        update={"database_url": f"sqlite+aiosqlite:///{work_dir / 'queue.db'}", "media_dir": work_dir / "media"}
    )
    settings = settings.model_copy(update={"storage": storage})
    script = opening_exchange((SAMPLES / "script.txt").read_text(encoding="utf-8"), frames / VIDEO_FPS)
    draft = Draft(
        requester=Requester(platform="cli", user_id="bench", chat_id="bench"),
        photo_a=(SAMPLES / "grace_hopper.jpg").read_bytes(), photo_b=(SAMPLES / "astronaut.png").read_bytes(),
        script=script, quality=QUALITY_BY_SIZE[size], seed=SEED,
    )  # fmt: skip
    prepared = prepare(draft, settings)

    async def submit(services) -> Assignment:
        submitted = await enqueue(prepared, services.queue, services.media)
        record = await services.queue.get(submitted.job_id)
        frame = services.media.path(submitted.job_id, "frame")
        return Assignment(submitted.job_id, record.spec.model_dump_json(), str(frame))

    return run_action(settings, submit)


def with_render(assignment: Assignment, **render) -> Assignment:
    """The same job with some render settings changed (steps, guidance, TeaCache)."""
    spec = JobSpec.from_json(assignment.spec_json)
    spec = spec.model_copy(update={"render": spec.render.model_copy(update=render)})
    return replace(assignment, spec_json=spec.model_dump_json())


def fit_speech(speech: Speech, seconds: float) -> Speech:
    """`speech` cut, or padded with silence, to exactly `seconds` (whole samples at both rates)."""

    def fit(audio: np.ndarray, rate: int) -> np.ndarray:
        fitted = np.zeros(round(seconds * rate), dtype=np.float32)
        kept = min(fitted.shape[0], audio.shape[0])
        fitted[:kept] = audio[:kept]
        fitted.flags.writeable = False
        return fitted

    return Speech(
        sample_rate=speech.sample_rate,
        tracks=MappingProxyType({speaker: fit(track, speech.sample_rate) for speaker, track in speech.tracks.items()}),
        mixed=fit(speech.mixed, speech.sample_rate),
        soundtrack=fit(speech.soundtrack, speech.soundtrack_rate),
        soundtrack_rate=speech.soundtrack_rate,
        lines=tuple(replace(line, end_s=min(line.end_s, seconds)) for line in speech.lines if line.start_s < seconds),
    )


def run_job(pipeline, assignment: Assignment, channel: ControlChannel, work_dir: Path, frames: int) -> JobTimings:
    """One job on this rank as `engine.serve` renders it (`render` = speech, then `render_speech`), the speech
    fitted to `frames` in between."""
    request = make_request(assignment, work_dir, rank=channel.rank)
    device = torch.device(pipeline.models.placement.device)
    clock = MemoryClock(device) if device.type == "cuda" else StageClock()  # syncs as the pipeline's own clock
    started = time.perf_counter()
    with clock.measure(Stage.TTS):
        speech = pipeline.speak(request.spec)
    output = pipeline.render_speech(
        request, fit_speech(speech, frames / VIDEO_FPS), clock=clock, is_cancel_requested=StepGate(channel, None)
    )
    wall_s = time.perf_counter() - started
    parts: dict[str, dict[str, float]] = {}
    for timing in clock.parts():
        parts.setdefault(timing.stage, {})[timing.part] = round(timing.seconds, 3)
    return JobTimings(
        steps=request.spec.render.steps, size=(output.height, output.width), wall_s=round(wall_s, 3),
        stages={timing.stage: round(timing.seconds, 3) for timing in clock.timings()}, parts=parts,
        speech_s=round(speech.duration_s, 3), stage_memory=clock.peaks if isinstance(clock, MemoryClock) else {},
    )  # fmt: skip


class MemoryClock(StageClock):
    """The pipeline's clock on a GPU, also keeping each stage's peak memory on this rank (the highest of its
    visits): the job's peak and the stage it comes from."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(sync=torch.cuda.synchronize)
        self.device = device
        self.peaks: dict[str, dict[str, float]] = {}

    @contextmanager
    def measure(self, stage: Stage) -> Iterator[None]:
        torch.cuda.reset_peak_memory_stats(self.device)
        with super().measure(stage):
            yield
        seen = self.peaks.setdefault(stage.value, {"allocated_gib": 0.0, "reserved_gib": 0.0})
        for key, reading in (("allocated_gib", torch.cuda.max_memory_allocated), ("reserved_gib",
                                                                                    torch.cuda.max_memory_reserved)):
            seen[key] = max(seen[key], round(reading(self.device) / GIB, 2))


# ---- the report ---------------------------------------------------------------------------------------------


def peak_memory(timed: JobTimings) -> dict[str, float]:
    """This rank's peak GPU memory over the job, in GiB: the highest stage's (zeros on the CPU)."""
    readings = timed.stage_memory.values()
    return {key: max((reading[key] for reading in readings), default=0.0) for key in ("allocated_gib", "reserved_gib")}


def build_report(args: argparse.Namespace, *, mode: str, gpus: int, load_s: float, timed: JobTimings,
                 warmup: JobTimings | None, memory: list[dict[str, float]]) -> dict:  # fmt: skip
    render_s = timed.render_s
    return {
        "date": dt.date.today().isoformat(), "commit": _commit(), "gpu": gpu_name(), "gpus": gpus,
        "torch": torch.__version__, "preset": args.preset, "size": list(timed.size), "frames": args.frames,
        "steps": args.steps, "passes": args.passes, "mode": mode, "load_s": round(load_s, 1),
        "wall_s": timed.wall_s, "stages": timed.stages, "parts": timed.parts,
        "non_stage_s": round(timed.wall_s - sum(timed.stages.values()), 3),
        "dit_share": round(render_s / timed.wall_s, 4), "non_dit_s": round(timed.wall_s - render_s, 3),
        "step_s": round(render_s / args.steps, 3), "speech_s": timed.speech_s,
        "peak_memory": [{"rank": rank, **reading} for rank, reading in enumerate(memory)],
        "stage_memory": timed.stage_memory,
        "warmup": None if warmup is None else asdict(warmup),
    }  # fmt: skip


def markdown_row(report: dict, note: str) -> str:
    stages, encode = report["stages"], report["parts"].get(Stage.ENCODE, {})
    peak = max(report["peak_memory"], key=lambda reading: reading["allocated_gib"])

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    cells = [
        report["date"], report["commit"], report["gpu"], report["gpus"], report["preset"],
        "×".join(map(str, report["size"][::-1])), report["frames"], report["steps"], report["passes"], report["mode"],
        f"{report['wall_s']:.1f}", seconds(stages.get(Stage.TTS)), seconds(stages.get(Stage.AUDIO)),
        seconds(encode.get("t5")), seconds(encode.get("clip")), seconds(encode.get("vae_encode")),
        seconds(stages.get(Stage.RENDER)), seconds(stages.get(Stage.DECODE)), seconds(stages.get(Stage.MUX)),
        seconds(report["step_s"]), f"{report['dit_share']:.1%}",
        f"{peak['allocated_gib']:.1f} / {peak['reserved_gib']:.1f}", note,
    ]  # fmt: skip
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def append_markdown(path: Path, report: dict, note: str) -> None:
    """Add the row under the last row of the whole-clip table, or start the table at the end of the file."""
    insert_table_rows(path, [markdown_row(report, note)], header=TABLE_HEADER, title=TABLE_TITLE, intro=TABLE_INTRO)


# ---- main ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Every stage of one whole clip, through the service's pipeline.")
    parser.add_argument("--preset", default="full-random", help="engine preset (full-random: full size, no files)")
    parser.add_argument("--size", type=int, choices=sorted(QUALITY_BY_SIZE), default=960, help="square frame side")
    parser.add_argument("--frames", type=int, default=81, help="clip length, 4n+1 (one chunk)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--passes", type=int, choices=(2, 3), default=3,
                        help="guidance passes per step: 3 exact, 2 the step-distilled mode (text scale 1)")  # fmt: skip
    parser.add_argument("--warmup-steps", type=int, default=1, help="steps of the warm-up job (0: none)")
    parser.add_argument("--teacache", action="store_true", help="jobs ask for TeaCache")
    parser.add_argument("--compile", action="store_true", help="torch.compile each DiT block (engine.acceleration)")
    parser.add_argument("--attention", default=None, help="DiT attention backend (default: the preset's)")
    parser.add_argument("--fp8", action="store_true", help="FP8 matrix multiplies in the DiT (engine.quantize)")
    parser.add_argument("--num_persistent_param_in_dit", type=int, default=None,
                        help="low memory: DiT parameters kept on the GPU, the other blocks streamed")  # fmt: skip
    parser.add_argument("--offload_model", action="store_true", help="low memory: models leave the GPU between stages")
    parser.add_argument("--t5_cpu", action="store_true", help="run T5 on the CPU")
    parser.add_argument("--t5_fsdp", action="store_true", help="shard T5's layers across the ranks (FSDP)")
    parser.add_argument("--dit_fsdp", action="store_true", help="shard the DiT's blocks across the ranks (FSDP)")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    parser.add_argument("--markdown", type=Path, default=None, help="append a row to this file's whole-clip table")
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    if args.frames <= MOTION_FRAMES or args.frames % 4 != 1:
        parser.error(f"--frames must be 4n+1 and more than the {MOTION_FRAMES} motion frames")
    return args


def serve_options(args: argparse.Namespace, world_size: int) -> ServeOptions:
    """The engine's options as `engine.serve` would get them from its command line for this run."""
    return ServeOptions(
        config_path=None, preset=args.preset, weights_dir=None, once=True,
        parallel=ParallelConfig(ulysses_size=world_size, t5_fsdp=args.t5_fsdp, dit_fsdp=args.dit_fsdp),
        frame_num=args.frames, sample_shift=None,
        offload_model=args.offload_model, time_limit_s=None, worker_name=None, attention=args.attention,
        compile=args.compile, persistent_dit_params=args.num_persistent_param_in_dit, t5_cpu=args.t5_cpu, fp8=args.fp8,
    )  # fmt: skip


def say(groups, message: str) -> None:
    """A progress line from rank 0 on stderr, at once: a benchmark killed by its time limit still shows how far
    it got (stdout to a file is block-buffered)."""
    if groups.is_leader:
        print(f"[bench_clip {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = load_settings(None)
    with joined_groups() as groups:
        channel = ControlChannel(groups)
        started = time.perf_counter()
        say(groups, f"building the {args.preset} pipeline on {groups.world_size} rank(s), device {groups.device}")
        pipeline = build_pipeline(serve_options(args, groups.world_size), settings, groups)
        load_s = time.perf_counter() - started
        say(groups, f"pipeline built in {load_s:.1f} s")
        with tempfile.TemporaryDirectory(prefix="duet-bench-clip-") as scratch:
            scratch = Path(scratch)
            job = channel.announce(
                queue_sample_job(settings, scratch, size=args.size, frames=args.frames) if groups.is_leader else None
            )
            text_guidance = RenderSettings().text_guidance if args.passes == 3 else 1.0  # 1: no text-dropping pass
            job = with_render(job, steps=args.steps, text_guidance=text_guidance, use_teacache=args.teacache)
            warmup = None
            if args.warmup_steps:
                say(groups, f"warm-up job: {args.warmup_steps} step(s)")
                warmup = run_job(pipeline, with_render(job, steps=args.warmup_steps), channel, scratch / "warmup",
                                 args.frames)  # fmt: skip
            say(groups, f"timed job: {args.steps} step(s), {args.passes} passes")
            timed = run_job(pipeline, job, channel, scratch / "timed", args.frames)
            memory = channel.gather(peak_memory(timed))  # also: rank 0 keeps the queue's files until all are done
        if not groups.is_leader:
            return
        mode = pipeline.models.preset.dit.attention_backend  # with --attention applied by build_pipeline
        mode += (" +compile" if is_compiled(pipeline.models.dit) else "") + (" +teacache" if args.teacache else "")
        mode += " +fp8" if args.fp8 else ""
        if args.num_persistent_param_in_dit is not None:
            mode += f" persistent={args.num_persistent_param_in_dit}"
        mode += (" +offload" if args.offload_model else "") + (" +t5_cpu" if args.t5_cpu else "")
        mode += (" +t5_fsdp" if args.t5_fsdp else "") + (" +dit_fsdp" if args.dit_fsdp else "")
        report = build_report(args, mode=mode, gpus=groups.world_size, load_s=load_s, timed=timed, warmup=warmup,
                              memory=memory)  # fmt: skip
        print(json.dumps(report, indent=1))
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
        if args.markdown:
            append_markdown(args.markdown, report, args.note)


if __name__ == "__main__":
    main()
