"""`python -m engine.serve`: the long-lived render service, one process per rank under torchrun.

Models load once; then, for days: rank 0 claims a job, announces it to every rank over the gloo control group,
all ranks render it in lock-step (sequence-parallel DiT), and rank 0 stores the MP4 and the result. Between jobs
ranks 1..N wait on gloo, never inside an NCCL collective (engine/parallel/groups.py says why).

What stops a job, always at a sampler step boundary and on every rank at once (rank 0 decides, `agree` tells):
the owner's cancel, a lost lease, SIGTERM (rank 0 has already requeued the job without charging the attempt),
the per-job time limit. After a job every rank reports its outcome; if the ranks disagree (one failed while the
others did not), the group may be stuck mid-collective, so every rank exits non-zero and the supervisor
(engine/supervisor.py, started by run_engine.sh) restarts it. A drain request finishes the current job and
exits 0; `--once` serves one job and exits; `--job_id` serves that job only (`duet render` starts such an engine
for its own job, which must not take another one queued ahead of it).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import click
import torch

from engine.leader import ActiveJob, Leader, StopCode, store_result
from engine.models.attention import DEFAULT_BACKEND, attention_backends, unavailable_reason
from engine.parallel.control import ControlChannel
from engine.parallel.groups import ParallelConfig, ProcessGroups, destroy_groups, init_groups
from engine.sampling import RenderCancelled
from storage.contract import JobSpec
from storage.errors import DuetError
from storage.settings import ENGINE_PRESETS, Settings, load_settings

logger = logging.getLogger("engine.serve")

OOM_MESSAGE = "The render ran out of GPU memory with these settings. Try a shorter dialogue or 480p."


@dataclass(frozen=True)
class ServeOptions:
    """The engine's command line, below `main` (the option names are the original service's)."""

    config_path: str | None
    preset: str | None  # None: [engine] preset
    weights_dir: Path | None  # None: [engine] weights_dir
    once: bool
    parallel: ParallelConfig
    frame_num: int | None
    sample_shift: float | None
    offload_model: bool
    time_limit_s: float | None  # None: [queue] job_timeout_s
    worker_name: str | None
    job_id: str | None = None  # serve this one job only, then exit (`duet render` starts an engine for its job)
    attention: str | None = None  # a registered attention backend; None: the preset's (DiTConfig's default)
    compile: bool = False  # torch.compile the DiT's blocks (engine.acceleration)
    persistent_dit_params: int | None = None  # --num_persistent_param_in_dit: None keeps the whole DiT on the GPU
    t5_cpu: bool = False  # T5 runs on the CPU (its prompts are cached per engine, so it runs once per scene)
    fp8: bool = False  # FP8 matrix multiplies in the DiT's blocks (engine.quantize)
    vae_tiling: bool = False  # decode in overlapping spatial tiles (less memory; seams, see engine/offload.py)

    def check_combinations(self) -> None:
        """Refuse options that do not work together; `build_pipeline` checks, so every way in (the command line,
        the benchmarks) gets the same refusal."""
        low_memory = self.offload_model or self.persistent_dit_params is not None
        if self.parallel.t5_fsdp and (self.t5_cpu or self.offload_model):
            raise ValueError("--t5_fsdp shards T5 over the GPUs; --t5_cpu/--offload_model keep it on the CPU: pick one")
        if self.parallel.dit_fsdp and (low_memory or self.fp8):
            raise ValueError("--dit_fsdp shards the DiT's blocks; it does not combine with "
                             "--num_persistent_param_in_dit, --offload_model or --fp8")  # fmt: skip
        if self.fp8 and low_memory:
            raise ValueError("--fp8 halves the DiT instead of streaming it: it does not combine with "
                             "--num_persistent_param_in_dit or --offload_model")  # fmt: skip
        if self.attention is not None and (reason := unavailable_reason(self.attention)):
            raise ValueError(reason)  # before minutes of loading, not at the first job


@dataclass(frozen=True)
class Assignment:
    """A claimed job as every rank needs it (pickled over the control group)."""

    job_id: str
    spec_json: str
    frame_path: str


@dataclass(frozen=True)
class RankOutcome:
    """How the job ended on one rank. `kind`: ok, stopped, refused (bad job), oom, error."""

    kind: str
    user_message: str = ""
    detail: str = ""


# ---- loading ----------------------------------------------------------------------------------------------


def build_pipeline(options: ServeOptions, settings: Settings, groups: ProcessGroups):
    """The render pipeline of this rank: the preset's models, wrapped for sequence parallelism when asked."""
    from engine.parallel.fsdp import dit_blocks, shard_blocks, t5_blocks
    from engine.parallel.sequence import SequenceParallelDiT
    from engine.pipeline import PipelineOptions, RenderPipeline
    from engine.presets import Placement, get_preset
    from engine.stages.render import DiTVelocity

    options.check_combinations()
    preset = get_preset(options.preset or settings.engine.preset)
    if options.frame_num is not None:
        preset = replace(preset, frame_num=options.frame_num)
    if options.attention is not None:  # through the config, so the sequence-parallel wrapper's local kernel follows
        preset = replace(preset, dit=replace(preset.dit, attention_backend=options.attention))
    options.parallel.check(groups.world_size, preset.dit.num_heads)
    # wav2vec2 runs where the DiT does: the reference keeps it on the CPU, where it costs seconds per job.
    placement = Placement(device=str(groups.device), t5_device="cpu" if options.t5_cpu else None,
                          wav2vec_device=str(groups.device))  # fmt: skip
    weights_dir = options.weights_dir or settings.engine.weights_dir
    pipeline_options = PipelineOptions(
        persistent_dit_params=options.persistent_dit_params, offload_models=options.offload_model,
        vae_tiling=options.vae_tiling,
    )  # fmt: skip
    pipeline = RenderPipeline.from_preset(
        preset, weights_dir, placement=placement, options=pipeline_options  # type: ignore[arg-type]
    )
    if options.fp8:
        from engine.quantize import quantize_dit_fp8

        quantize_dit_fp8(pipeline.models.dit)  # after loading and LoRA merging, before compiling (its docstring)
    if options.parallel.dit_fsdp:
        shard_blocks(dit_blocks(pipeline.models.dit), groups)
    if options.parallel.t5_fsdp:
        shard_blocks(t5_blocks(pipeline.models.t5), groups)
    if groups.world_size > 1:
        from engine.parallel.vae_rows import row_bands_over

        pipeline.models.vae.row_bands = row_bands_over(groups.world)
    if options.parallel.sequence_parallel_size > 1:
        backend = None
        if options.parallel.backend == "xfuser":
            from engine.parallel.xfuser_attention import XFuserAttention

            backend = XFuserAttention(options.parallel, groups)
        parallel_dit = SequenceParallelDiT(pipeline.models.dit, groups.world, attention_backend=backend)
        pipeline.make_velocity = lambda dit, teacache: DiTVelocity(parallel_dit, teacache)  # type: ignore[arg-type]
    if options.compile:
        from engine.acceleration import compile_blocks

        compile_blocks(pipeline.models.dit)  # compiles lazily, at the first forward of each input shape
    return pipeline


# ---- one job, every rank ------------------------------------------------------------------------------------


class StepGate:
    """The pipeline's `is_cancel_requested`: one `agree` per call, so every rank stops at the same step."""

    def __init__(self, channel: ControlChannel, leader: Leader | None) -> None:
        self.channel = channel
        self.leader = leader
        self.code = StopCode.GO_ON

    def __call__(self) -> bool:
        mine = self.leader.stop_code() if self.leader is not None else StopCode.GO_ON
        self.code = StopCode(self.channel.agree(int(mine)))
        return self.code != StopCode.GO_ON


def make_request(assignment: Assignment, work_dir: Path, *, rank: int):
    """Every rank renders; only rank 0's MP4 is stored, so the others skip the mux."""
    from engine.pipeline import RenderRequest

    return RenderRequest(
        spec=JobSpec.from_json(assignment.spec_json), frame_path=Path(assignment.frame_path), work_dir=work_dir,
        job_id=assignment.job_id, writes_video=rank == 0,
    )  # fmt: skip


def render_assignment(pipeline, assignment: Assignment, gate: StepGate, leader: Leader | None, work_dir: Path):
    """Render on this rank; returns (outcome, output or None). Never raises for a job's own failure."""
    request = make_request(assignment, work_dir, rank=gate.channel.rank)
    on_progress = leader.report if leader is not None else (lambda stage, done, total: None)
    try:
        output = pipeline.render(request, on_progress=on_progress, is_cancel_requested=gate)
    except RenderCancelled:
        return RankOutcome("stopped", detail=str(gate.code.name)), None
    except torch.OutOfMemoryError as exc:
        return RankOutcome("oom", OOM_MESSAGE, f"{type(exc).__name__}: {exc}"), None
    except DuetError as exc:  # the job itself cannot be rendered (too long, unknown LoRA, bad speech input)
        return RankOutcome("refused", exc.user_message, exc.admin_detail), None
    except Exception as exc:
        logger.exception("render of job %s failed", assignment.job_id,
                         extra={"action": "render", "job_id": assignment.job_id})  # fmt: skip
        return RankOutcome("error", "The render failed.", _short_traceback(exc)), None
    if gate.code != StopCode.GO_ON:  # stopped after the last step boundary: e.g. requeued on SIGTERM meanwhile
        return RankOutcome("stopped", detail=gate.code.name), None
    stages = ", ".join(f"{timing.stage} {timing.seconds:.1f} s" for timing in output.timings)
    logger.info("job %s rendered: %s", assignment.job_id, stages,
                extra={"action": "render", "job_id": assignment.job_id})  # fmt: skip
    return RankOutcome("ok"), output


def _short_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)[-6:])[-2000:]


def group_is_sound(outcomes: list[RankOutcome]) -> bool:
    """Did every rank end the job the same way? If not, a rank may have left the others inside a collective."""
    first = outcomes[0]
    return all(o.kind == first.kind and (o.kind not in ("error", "oom") or o.detail == first.detail) for o in outcomes)


def settle(outcomes: list[RankOutcome], gate: StepGate, output):
    """Rank 0's final write for the job, as a coroutine factory for `Leader.settle`."""
    failed = next((o for o in outcomes if o.kind in ("oom", "refused", "error")), None)

    async def write(queue, media, job: ActiveJob) -> None:
        if failed is not None:
            retryable = failed.kind == "error"
            await queue.fail(job.job_id, job.token, error_user=failed.user_message,
                             error_admin=f"{failed.kind}: {failed.detail}", retryable=retryable)  # fmt: skip
        elif any(o.kind == "stopped" for o in outcomes):
            if gate.code == StopCode.CANCELLED:
                await queue.finish_cancelled(job.job_id, job.token)
            elif gate.code == StopCode.TIME_LIMIT:
                await queue.fail(job.job_id, job.token, error_user="The render took too long and was stopped.",
                                 error_admin="per-job time limit reached", retryable=False)  # fmt: skip
            # LEASE_LOST: not ours any more. SHUTDOWN: already requeued by the signal watcher.
        else:
            await store_result(queue, media, job, video=output.video_path, fitted=output.fitted_path,
                               duration_s=output.duration_s, width=output.width, height=output.height,
                               timings=output.timings)  # fmt: skip
            logger.info("job %s succeeded", job.job_id, extra={"action": "complete", "job_id": job.job_id})

    return write


def run_job(pipeline, assignment: Assignment, channel: ControlChannel, leader: Leader | None) -> bool:
    """One job on this rank, start to end. Returns whether the group is still sound."""
    gate = StepGate(channel, leader)
    with tempfile.TemporaryDirectory(prefix=f"duet-{assignment.job_id[:8]}-r{channel.rank}-") as scratch:
        outcome, output = render_assignment(pipeline, assignment, gate, leader, Path(scratch))
        outcomes = channel.gather(outcome)
        if leader is not None:
            leader.settle(settle(outcomes, gate, output))
    sound = group_is_sound(outcomes)
    if not sound:
        logger.error("ranks ended the job differently: %s; restarting the group", [o.kind for o in outcomes])
    return sound


# ---- the loops ----------------------------------------------------------------------------------------------


def with_engine_defaults(spec: JobSpec, sample_shift: float | None) -> str:
    """The spec as rendered here: the engine's --sample_shift fills in a job that chose none."""
    if sample_shift is not None and spec.render.sample_shift is None:
        spec = spec.model_copy(update={"render": spec.render.model_copy(update={"sample_shift": sample_shift})})
    return spec.model_dump_json()


def refuse(error: DuetError):
    async def write(queue, media, job: ActiveJob) -> None:
        await queue.fail(job.job_id, job.token, error_user=error.user_message, error_admin=error.admin_detail,
                         retryable=False)  # fmt: skip

    return write


def lead(
    pipeline, channel: ControlChannel, leader: Leader, settings: Settings, *, once: bool, sample_shift: float | None
) -> int:
    """Rank 0: claim, announce, render, settle; until drained, signalled, or (with --once) one job is done.

    An engine started for one job (`leader.job_id`) waits while that job is queued but not claimable yet, and
    stops, with nothing to do, once it cannot become ours any more.
    """
    try:
        while not leader.should_stop:
            record = leader.claim()
            if record is None:
                if leader.job_id is not None and (reason := leader.why_job_is_out_of_reach()) is not None:
                    logger.info("job %s is %s: nothing to render here", leader.job_id, reason,
                                extra={"action": "claim", "job_id": leader.job_id})  # fmt: skip
                    break
                leader.wait_idle(settings.queue.poll_interval_s)
                continue
            try:
                assignment = Assignment(record.id, with_engine_defaults(record.spec, sample_shift),
                                        leader.frame_path(record))  # fmt: skip
            except DuetError as exc:  # a damaged job: no rank needs to see it
                leader.settle(refuse(exc))
                continue
            channel.announce(assignment)
            logger.info("job %s claimed (attempt %d)", record.id, record.attempts,
                        extra={"action": "claim", "job_id": record.id})  # fmt: skip
            if not run_job(pipeline, assignment, channel, leader):
                return 1
            if once:
                break
    finally:
        if leader.should_stop:
            logger.info("stopping: %s", "drain requested" if leader.drain_requested else "signal")
    channel.announce(None)
    return 0


def follow(pipeline, channel: ControlChannel) -> int:
    """Ranks 1..N: wait on gloo for the next job; render it; stop when rank 0 says so."""
    while (assignment := channel.announce()) is not None:
        if not run_job(pipeline, assignment, channel, None):
            return 1
    return 0


def serve(options: ServeOptions) -> int:
    settings = load_settings(options.config_path)
    groups = init_groups(options.parallel.collective_timeout_s)
    _setup_logging(groups.rank)
    leader = None
    try:
        started = time.perf_counter()
        pipeline = build_pipeline(options, settings, groups)
        load_s = time.perf_counter() - started
        logger.info("models loaded in %.1f s (preset %s, %d rank(s), device %s, backend %s)", load_s,
                    pipeline.models.preset.name, groups.world_size, groups.device, groups.backend)  # fmt: skip
        channel = ControlChannel(groups)
        if not groups.is_leader:
            # torchrun signals every rank; only rank 0 acts, the others leave when it announces the stop.
            signal.signal(signal.SIGTERM, lambda signum, frame: logger.info("SIGTERM: waiting for rank 0"))
            return follow(pipeline, channel)
        leader = Leader(
            settings, _worker_name(options, settings),
            time_limit_s=options.time_limit_s or settings.queue.job_timeout_s,
            requeue_on_signal="DUET_SUPERVISED" not in os.environ,  # else engine/supervisor.py requeues
            info=_worker_info(options, groups, pipeline, load_s), job_id=options.job_id,
        )  # fmt: skip
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda signum, frame: leader.request_shutdown(signum))
        leader.start()
        once = options.once or options.job_id is not None
        return lead(pipeline, channel, leader, settings, once=once, sample_shift=options.sample_shift)
    finally:
        if leader is not None:
            leader.close()
        destroy_groups(groups)


def _worker_name(options: ServeOptions, settings: Settings) -> str:
    return (options.worker_name or os.environ.get("DUET_WORKER_NAME") or settings.engine.worker_name
            or f"{socket.gethostname()}-{os.getpid()}")  # fmt: skip


def _worker_info(options: ServeOptions, groups: ProcessGroups, pipeline, load_s: float) -> dict:
    return {
        "host": socket.gethostname(), "pid": os.getpid(), "world_size": groups.world_size,
        "preset": pipeline.models.preset.name, "device": str(groups.device), "backend": groups.backend,
        "ulysses_size": options.parallel.ulysses_size, "load_s": round(load_s, 1),
        "attention": pipeline.models.dit.config.attention_backend, "compiled": options.compile, "fp8": options.fp8,
        "persistent_dit_params": options.persistent_dit_params, "offload_model": options.offload_model,
        "t5_cpu": options.t5_cpu,
    }  # fmt: skip


def _setup_logging(rank: int) -> None:
    logging.basicConfig(
        level=os.environ.get("DUET_LOG_LEVEL", "INFO"), stream=sys.stderr,
        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
    )  # fmt: skip


def check_weights(settings: Settings, preset_name: str | None, weights_dir: Path | None) -> int:
    """Exit code 0 when the preset can load; 3 (with every missing file named) when weights are missing."""
    from engine.presets import get_preset, missing_files
    from engine.stages.tts import required_tts_files

    preset = get_preset(preset_name or settings.engine.preset)
    if not preset.needs_weights:
        click.echo(f"preset {preset.name}: random weights, no files needed (the output is noise)", err=True)
        return 0
    weights_dir = weights_dir or settings.engine.weights_dir
    missing = missing_files(weights_dir) + [path for path in required_tts_files(weights_dir) if not path.exists()]
    if missing:
        click.echo(f"Cannot start the {preset.name} preset: missing weight files under {weights_dir}:", err=True)
        for path in missing:
            click.echo(f"  {path}", err=True)
        click.echo("See weights/README.md for where to get them, or use --preset tiny to try the path.", err=True)
        return 3
    click.echo(f"preset {preset.name}: weights found under {weights_dir}", err=True)
    return 0


# ---- command line -----------------------------------------------------------------------------------------


@click.command("serve", context_settings={"show_default": True})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="DUET_CONFIG",
              help="bot_config.toml (database, media, queue timings, [engine]).")
@click.option("--preset", type=click.Choice(ENGINE_PRESETS), default=None,
              help="Models to load; default [engine] preset. tiny: random weights on CPU (the output is noise).")
@click.option("--weights_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Checkpoint folder; default [engine] weights_dir.")
@click.option("--once", is_flag=True, help="Serve one job, then exit.")
@click.option("--job_id", default=None, metavar="ID",
              help="Serve this job only (waiting while it is queued but not yet due), then exit; implies --once.")
@click.option("--ulysses_size", type=int, default=1, help="Ranks sharing one DiT sequence (Ulysses).")
@click.option("--ring_size", type=int, default=1, help="Ring-attention degree (xfuser backend only).")
@click.option("--sp_backend", type=click.Choice(["torch", "xfuser"]), default="torch",
              help="Sequence-parallel attention: built-in all-to-all (any device) or xfuser 0.4.5 (CUDA).")
@click.option("--t5_fsdp", is_flag=True, help="Shard T5's layers across the ranks (FSDP).")
@click.option("--dit_fsdp", is_flag=True, help="Shard the DiT's blocks across the ranks (FSDP).")
@click.option("--frame_num", type=int, default=None, help="Frames per chunk (4n+1); default the preset's (81).")
@click.option("--sample_shift", type=float, default=None,
              help="Default flow shift for jobs that set none (default: 7 at 480p, 11 at 720p).")
@click.option("--offload_model", type=bool, default=False,
              help="Move models off the GPU while another stage runs (T5, CLIP, the DiT's kept blocks).")
@click.option("--num_persistent_param_in_dit", "persistent_dit_params", type=click.IntRange(min=0), default=None,
              help="Keep only this many DiT parameters on the GPU; stream the other blocks from pinned CPU memory.")
@click.option("--t5_cpu", is_flag=True, help="Run T5 on the CPU (once per distinct scene: prompts are cached).")
@click.option("--fp8", is_flag=True, help="FP8 matrix multiplies in the DiT's blocks (Ada/Hopper; use with --compile).")
@click.option("--vae_tiling", is_flag=True, help="Decode in overlapping tiles: less memory, small seams.")
@click.option("--collective_timeout_s", type=float, default=600.0,
              help="Longest a render collective may hang before the group is torn down (idle waits are not bound).")
@click.option("--time_limit_s", type=float, default=None, help="Per-job limit; default [queue] job_timeout_s.")
@click.option("--worker_name", default=None, help="Name in `duet queue workers`; default host-pid.")
@click.option("--attention", type=click.Choice(attention_backends()), default=None,
              help=f"DiT attention kernel; default the preset's ({DEFAULT_BACKEND}). cudnn, flash and fa4 need CUDA; "
              "fa3 and fa3_fp8 (float8, not exact) a Hopper GPU.")
@click.option("--compile", "compile_dit", is_flag=True,
              help="torch.compile the DiT's blocks: faster steps on GPUs after one compilation per input shape.")
@click.option("--check", is_flag=True, help="Only check that the preset's weight files exist; say what would load.")
def main(config_path, preset, weights_dir, once, job_id, ulysses_size, ring_size, sp_backend, t5_fsdp, dit_fsdp,
         frame_num, sample_shift, offload_model, persistent_dit_params, t5_cpu, fp8, vae_tiling, collective_timeout_s,
         time_limit_s, worker_name, attention, compile_dit, check) -> None:  # fmt: skip
    """Serve the render queue until drained or stopped (run it under torchrun; see run_engine.sh)."""
    try:
        settings = load_settings(config_path)
    except DuetError as exc:
        raise click.ClickException(exc.user_message) from None
    if check:
        sys.exit(check_weights(settings, preset, weights_dir))
    if frame_num is not None and (frame_num < 5 or frame_num % 4 != 1):
        raise click.BadParameter("must be 4n+1 and at least 5", param_hint="--frame_num")
    if ring_size != 1 and sp_backend != "xfuser":
        raise click.UsageError("--ring_size > 1 needs --sp_backend xfuser (the built-in backend is Ulysses only)")
    options = ServeOptions(
        config_path=config_path, preset=preset, weights_dir=weights_dir, once=once,
        parallel=ParallelConfig(ulysses_size=ulysses_size, ring_size=ring_size, backend=sp_backend, t5_fsdp=t5_fsdp,
                                dit_fsdp=dit_fsdp, collective_timeout_s=collective_timeout_s),
        frame_num=frame_num, sample_shift=sample_shift, offload_model=offload_model, time_limit_s=time_limit_s,
        worker_name=worker_name, job_id=job_id, attention=attention, compile=compile_dit,
        persistent_dit_params=persistent_dit_params, t5_cpu=t5_cpu, fp8=fp8, vae_tiling=vae_tiling,
    )  # fmt: skip
    try:
        options.check_combinations()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    sys.exit(serve(options))


if __name__ == "__main__":
    main()
