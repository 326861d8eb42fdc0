"""The `duet` command: one entry point for operators and newcomers.

`duet queue …` (storage's admin CLI, plus `submit`, which lives here because it validates like the chat
bots do), `duet script parse`. Heavy imports (torch, the platform libraries) happen inside the commands
that need them, so `duet queue` works on a host that has neither.
"""

from __future__ import annotations

import getpass
import json
import re
import sys

import click

from bot.core.errors import InputError
from bot.core.script import decode_script_bytes, parse_script
from bot.core.limits import script_limits
from bot.render import demo_command, render_command
from storage.cli import emit_json, queue_group, run_with_services, settings_from
from storage.contract import Requester


@click.group()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="DUET_CONFIG",
    help="bot_config.toml to use (default: $DUET_CONFIG, else ./bot_config.toml, else built-in defaults).",
)
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Duet: two photos and a dialogue script in, a two-person talking video out."""
    ctx.ensure_object(dict)
    ctx.obj["settings"] = settings_from(config_path)


main.add_command(queue_group)
main.add_command(render_command)  # bot.render starts the engine in another process: no torch here
main.add_command(demo_command)


@main.group("script")
def script_group() -> None:
    """Check how a dialogue script will be read."""


@script_group.command("parse")
@click.argument("file", type=click.File("rb"))
@click.option("--json", "as_json", is_flag=True, help='Print [{"speaker": "A"|"B", "text": "…"}].')
@click.option("--locale", default="en", show_default=True, help="Language of error messages (en, zh).")
@click.pass_context
def script_parse(ctx: click.Context, file, as_json: bool, locale: str) -> None:
    """Split FILE (or - for stdin) into speakers and lines."""
    settings = ctx.obj["settings"]
    try:
        dialogue = parse_script(_read_script(file, settings), script_limits(settings))
    except InputError as exc:
        click.echo(f"Error: {exc.message(locale)}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(dialogue.to_json(), ensure_ascii=False, indent=2))
        return
    names = dialogue.names
    for line in dialogue.lines:
        label = f"{line.speaker} ({names[line.speaker]})" if line.speaker in names else line.speaker
        directions = f"  [{'; '.join(line.directions)}]" if line.directions else ""
        click.echo(f"{label}: {line.text}{directions}")
    click.echo(f"-- {len(dialogue.lines)} lines, format {dialogue.format}, about {dialogue.estimated_speech_s():.0f} s of speech")


def _local_user() -> str:
    name = re.sub(r"[^0-9A-Za-z_.-]", "_", getpass.getuser() or "operator")[:64]
    return name or "operator"


@queue_group.command("submit")
@click.option("--photo-a", required=True, type=click.File("rb"), help="Photo of speaker A (stands left).")
@click.option("--photo-b", required=True, type=click.File("rb"), help="Photo of speaker B (stands right).")
@click.option("--script", "script_file", required=True, type=click.File("rb"), help="Dialogue script file.")
@click.option("--scene", default="", help="What the scene looks like (optional).")
@click.option("--voice-a", default=None, help="Kokoro voice of A (default: by language).")
@click.option("--voice-b", default=None, help="Kokoro voice of B (default: by language).")
@click.option("--language", type=click.Choice(["auto", "en", "zh"]), default="auto", show_default=True)
@click.option("--quality", type=click.Choice(["480p", "720p"]), default=None, help="Default: [render] quality.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=None)
@click.option("--priority", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def submit_command(ctx, photo_a, photo_b, script_file, scene, voice_a, voice_b, language, quality, seed, priority, as_json):
    """Queue a job from files, through the same checks as the chat bots. Prints the job id."""
    from bot.core.submit import Draft, enqueue, prepare  # photo composition needs the `bots` extra

    settings = ctx.obj["settings"]
    draft = Draft(
        requester=Requester(platform="cli", user_id=_local_user(), chat_id="local"),
        photo_a=photo_a.read(),
        photo_b=photo_b.read(),
        script=_read_script(script_file, settings),
        scene=scene,
        voice_a=voice_a,
        voice_b=voice_b,
        language=language,
        quality=quality,
        seed=seed,
    )
    try:
        prepared = prepare(draft, settings)
    except InputError as exc:
        click.echo(f"Error: {exc.message('en')}", err=True)
        sys.exit(1)
    submitted = run_with_services(ctx, lambda s: enqueue(prepared, s.queue, s.media, priority=priority))
    if as_json:
        emit_json(
            {
                "id": submitted.job_id,
                "state": "queued",
                "lines": len(prepared.dialogue.lines),
                "voices": {speaker: voice.id for speaker, voice in prepared.voices.voices.items()},
                "estimated_speech_s": round(prepared.estimated_speech_s, 1),
            }
        )
    else:
        click.echo(submitted.job_id)


@main.command("bots")
@click.pass_context
def bots_command(ctx: click.Context) -> None:
    """Run the chat front ends whose tokens are set (TELEGRAM_TOKEN, DISCORD_TOKEN), delivery and the web server."""
    import asyncio

    from bot.app import run_bots  # discord.py / python-telegram-bot / aiohttp: the `bots` extra
    from storage.settings import Secrets

    sys.exit(asyncio.run(run_bots(ctx.obj["settings"], Secrets.from_env())))


def _read_script(file, settings) -> str:
    try:
        return decode_script_bytes(file.read(), script_limits(settings))
    except InputError as exc:
        click.echo(f"Error: {exc.message('en')}", err=True)
        sys.exit(1)
