"""`duet render` and `duet demo`: one video from files, without a chat, through the same queue and engine.

The request goes through the chat bots' validation and composition (`bot.core.submit.prepare`) and into the
queue as a `cli` job; if no engine is serving the queue, one is started for this job alone (`engine.serve
--job_id`, under torchrun when there are several GPUs: it never takes another job queued ahead of this one); a
progress bar follows the job; the MP4 is copied out at the end.
Importing this module imports neither torch nor the chat libraries: `duet queue` must work without them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from storage import admin
from storage.cli import run_action
from storage.contract import TERMINAL_STATES, JobState, Requester
from storage.queue import JobRecord
from storage.settings import ENGINE_PRESETS, Settings

SAMPLES = Path(__file__).resolve().parent / "samples"
POLL_S = 0.5
TINY_WARNING = (
    "No model weights found under {weights}: rendering with the tiny preset instead. Its weights are random, so "
    "the video will be NOISE with the right length, size and voices' timing. Put the checkpoints in place "
    "(weights/README.md) for a real video."
)
ONE_JOB_WORKER_PREFIX = "duet-render-"  # worker name prefix of an engine started here for one job
STAGE_NAMES = {"tts": "speech", "audio": "audio features", "encode": "encoding", "render": "rendering",
               "decode": "decoding", "mux": "writing the MP4"}  # fmt: skip

console = Console(stderr=True)


def _config_path(ctx: click.Context) -> str | None:
    return ctx.find_root().params.get("config_path")


def submit_files(settings: Settings, *, photo_a: bytes, photo_b: bytes, script: str, scene: str,
                 voice_a: str | None, voice_b: str | None, language: str, quality: str | None,
                 seed: int | None) -> str:  # fmt: skip
    """Validate and queue like the chat bots do; exits with the user-facing message when the input is refused."""
    from bot.core.errors import InputError
    from bot.core.submit import Draft, enqueue, prepare

    draft = Draft(
        requester=Requester(platform="cli", user_id="local", chat_id="local"), photo_a=photo_a, photo_b=photo_b,
        script=script, scene=scene, voice_a=voice_a, voice_b=voice_b, language=language, quality=quality, seed=seed,
    )  # fmt: skip
    try:
        prepared = prepare(draft, settings)
    except InputError as exc:
        raise click.ClickException(exc.message("en")) from None
    return run_action(settings, lambda s: enqueue(prepared, s.queue, s.media)).job_id


def engine_is_serving(settings: Settings) -> bool:
    """Whether an engine serves the queue (one that another `duet render` started serves only its own job)."""
    workers = run_action(settings, lambda s: admin.list_workers(s.queue))
    return any(w["state"] in ("idle", "busy") and not w["id"].startswith(ONE_JOB_WORKER_PREFIX) for w in workers)


def start_engine(config_path: str | None, preset: str, gpus: int, log_path: Path, job_id: str) -> subprocess.Popen:
    """`engine.serve --job_id` for the job just queued: one process on the CPU or one GPU, torchrun for several.
    Its own worker name keeps it apart from a configured engine's ([engine] worker_name)."""
    serve = ["-m", "engine.serve", "--job_id", job_id, "--worker_name", f"{ONE_JOB_WORKER_PREFIX}{job_id[:8]}",
             "--preset", preset]  # fmt: skip
    if config_path:
        serve += ["--config", config_path]
    if gpus > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                   *serve, "--ulysses_size", str(gpus)]  # fmt: skip
    else:
        command = [sys.executable, *serve]
    with open(log_path, "w") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def follow_job(settings: Settings, job_id: str, engine: subprocess.Popen | None, log_path: Path) -> JobRecord:
    """A progress bar until the job ends. Ctrl-C cancels the job. Fails if the started engine dies first."""
    with Progress(TextColumn("{task.description:<18}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                  TimeElapsedColumn(), console=console) as progress:  # fmt: skip
        bar = progress.add_task("queued", total=1.0, detail="")
        try:
            while True:
                record = run_action(settings, lambda s: s.queue.get(job_id))
                if JobState(record.state) in TERMINAL_STATES:
                    return record
                if record.state == JobState.RUNNING and record.stage:
                    description = STAGE_NAMES.get(record.stage, record.stage)
                    progress.update(bar, description=description, completed=record.progress,
                                    detail=record.progress_detail or "")  # fmt: skip
                if engine is not None and engine.poll() is not None and record.state == JobState.QUEUED:
                    raise click.ClickException(
                        f"The render engine stopped without taking the job (exit {engine.returncode}). "
                        f"Its log: {log_path}\n{_tail(log_path)}"
                    )
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            run_action(settings, lambda s: s.queue.cancel(job_id, actor="cli", is_admin=True))
            raise click.ClickException(f"Cancelled job {job_id}.") from None


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def choose_preset(settings: Settings, preset: str | None, *, fall_back_to_tiny: bool) -> str:
    """The preset to start an engine with; refuses (naming the files) when the weights are missing."""
    from engine.presets import get_preset, missing_files
    from engine.stages.tts import required_tts_files

    name = preset or settings.engine.preset
    if not get_preset(name).needs_weights:
        return name
    weights = settings.engine.weights_dir
    missing = missing_files(weights) + [path for path in required_tts_files(weights) if not path.exists()]
    if not missing:
        return name
    if fall_back_to_tiny:
        console.print(f"[bold yellow]{TINY_WARNING.format(weights=weights)}[/]")
        return "tiny"
    names = "\n".join(f"  {path}" for path in missing)
    raise click.ClickException(f"missing weight files:\n{names}\nSee weights/README.md, or pass --preset tiny.")


def render_files(ctx: click.Context, *, photo_a: bytes, photo_b: bytes, script: str, out: Path, preset: str | None,
                 gpus: int | None, fall_back_to_tiny: bool, **draft) -> None:  # fmt: skip
    settings: Settings = ctx.obj["settings"]
    engine = None
    log_path = Path(tempfile.gettempdir()) / f"duet-engine-{int(time.time())}.log"
    serving = engine_is_serving(settings)
    if not serving:
        preset = choose_preset(settings, preset, fall_back_to_tiny=fall_back_to_tiny)
    job_id = submit_files(settings, photo_a=photo_a, photo_b=photo_b, script=script, **draft)
    console.print(f"queued job {job_id}")
    if not serving:
        import torch  # only here: starting an engine is the one thing that needs it

        count = gpus if gpus is not None else max(1, torch.cuda.device_count())
        console.print(f"starting the render engine ({preset} preset, {count} process(es)); log: {log_path}")
        engine = start_engine(_config_path(ctx), preset, count, log_path, job_id)
    try:
        record = follow_job(settings, job_id, engine, log_path)
    finally:
        if engine is not None and engine.poll() is None:
            engine.terminate()
            engine.wait(60)
    if record.state != JobState.SUCCEEDED:
        raise click.ClickException(f"The job ended {record.state}: {record.error_user or 'no reason given'}")
    source = Path(settings.storage.media_dir) / job_id / "result.mp4"
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, out)
    result = record.result
    console.print(f"[bold green]wrote {out}[/] ({result.width}x{result.height}, {result.duration_s:.1f} s)")


_SHARED_OPTIONS = [
    click.option("--scene", default="", help="What the scene looks like (optional)."),
    click.option("--voice-a", default=None, help="Kokoro voice of A (default: by language)."),
    click.option("--voice-b", default=None, help="Kokoro voice of B (default: by language)."),
    click.option("--language", type=click.Choice(["auto", "en", "zh"]), default="auto", show_default=True),
    click.option("--quality", type=click.Choice(["480p", "720p"]), default=None, help="Default: [render] quality."),
    click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=None),
    click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("video.mp4"),
                 show_default=True, help="Where to write the MP4."),
    click.option("--preset", type=click.Choice(ENGINE_PRESETS), default=None,
                 help="Engine preset if one is started (default [engine] preset)."),
    click.option("--gpus", type=int, default=None, help="Processes for a started engine (default: every GPU, or 1)."),
]


def _shared(command):
    for option in reversed(_SHARED_OPTIONS):
        command = option(command)
    return command


@click.command("render")
@click.option("--photo-a", required=True, type=click.File("rb"), help="Photo of speaker A (stands left).")
@click.option("--photo-b", required=True, type=click.File("rb"), help="Photo of speaker B (stands right).")
@click.option("--script", "script_file", required=True, type=click.File("rb"), help="Dialogue script file.")
@_shared
@click.pass_context
def render_command(ctx, photo_a, photo_b, script_file, out, preset, gpus, **draft) -> None:
    """Render one video from two photos and a script, through the queue (starting an engine if none runs)."""
    from bot.core.errors import InputError
    from bot.core.limits import script_limits
    from bot.core.script import decode_script_bytes

    try:
        script = decode_script_bytes(script_file.read(), script_limits(ctx.obj["settings"]))
    except InputError as exc:
        raise click.ClickException(exc.message("en")) from None
    render_files(ctx, photo_a=photo_a.read(), photo_b=photo_b.read(), script=script, out=out, preset=preset,
                 gpus=gpus, fall_back_to_tiny=False, **draft)  # fmt: skip


@click.command("demo")
@_shared
@click.pass_context
def demo_command(ctx, out, preset, gpus, **draft) -> None:
    """Render the sample photos and dialogue of bot/samples (real weights if present, else the tiny preset)."""
    render_files(ctx, photo_a=(SAMPLES / "grace_hopper.jpg").read_bytes(),
                 photo_b=(SAMPLES / "astronaut.png").read_bytes(), script=(SAMPLES / "script.txt").read_text(),
                 out=out, preset=preset, gpus=gpus, fall_back_to_tiny=preset is None, **draft)  # fmt: skip
