"""The `duet` command: one entry point for operators and newcomers.

`duet queue …` (storage's admin CLI, plus `submit`, which lives here because it validates like the chat
bots do), `duet script parse`. Heavy imports (torch, the platform libraries) happen inside the commands
that need them, so `duet queue` works on a host that has neither.
"""

from __future__ import annotations

import json
import sys

import click

from bot.core.errors import InputError
from bot.core.script import ScriptLimits, decode_script_bytes, parse_script
from storage.cli import queue_group, settings_from
from storage.settings import Settings


def script_limits(settings: Settings) -> ScriptLimits:
    limits = settings.limits
    return ScriptLimits(
        max_script_chars=limits.max_script_chars, max_line_chars=limits.max_line_chars, max_speech_s=limits.max_speech_s
    )


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
    limits = script_limits(ctx.obj["settings"])
    try:
        dialogue = parse_script(decode_script_bytes(file.read(), limits), limits)
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
