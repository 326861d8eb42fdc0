"""The slash commands: /talk, /jobs, /show, /cancel, /voices, and the admin ones /queue, /pause, /resume.

Each command parses its options, calls `BotService` and answers; refusals are ephemeral answers in the
person's language (the tree's error handler, bot/discord/client.py). /talk answers within Discord's 3
seconds: what the platform announces about the attachments (size, type) is checked before anything is
downloaded, then it defers (or shows the script modal, which must be the first answer) and does the
slow work.

Admin commands check `[discord] admin_ids` from the config on every call. `default_permissions` only
hides them from non-administrators in the Discord client; it is never what grants them.
"""

from __future__ import annotations

import asyncio
from typing import Optional

import discord
from discord import app_commands

from bot.core.answers import cancel_text, jobs_text, queue_stats_text, show_actions, voices_text
from bot.core.drafts import PhotoSlot
from bot.core.service import BotService
from bot.core.status import status_text
from bot.core.texts import size_text, text
from bot.core.voices import find_voices
from bot.discord.modals import MAX_SCENE_CHARS, ScriptModal, check_script_into_draft
from bot.discord.replies import (
    FileTooLarge,
    actor_of,
    add_photos,
    download,
    locale_of,
    present_draft,
    requester_of,
    say,
    service_of,
)
from storage import admin

DISCORD_STRING_OPTION_CHARS = 6000
MAX_SEED = 2**32 - 1
LANGUAGES = [
    app_commands.Choice(name="Automatic", value="auto"),
    app_commands.Choice(name="English", value="en"),
    app_commands.Choice(name="中文", value="zh"),
]
QUALITIES = [
    app_commands.Choice(name="720p (best)", value="720p"),
    app_commands.Choice(name="480p (faster)", value="480p"),
]


def _check_announced(
    service: BotService, photos: dict[PhotoSlot, discord.Attachment], script_file: discord.Attachment | None
) -> None:
    """Refuse by what Discord announces about the attachments, before downloading any of them."""
    for slot, attachment in photos.items():
        service.check_announced_photo(attachment.size, attachment.content_type, slot)
    if script_file is not None and script_file.size > _script_file_cap(service):
        raise FileTooLarge(limit=size_text(_script_file_cap(service)), admin_detail="script file by size")


def _script_file_cap(service: BotService) -> int:
    return service.settings.limits.max_script_chars * 4  # the longest script in UTF-8


@app_commands.command(description="Make a video of two people talking: two photos and a dialogue")
@app_commands.describe(
    photo_a="Person A: stands left and speaks the A lines",
    photo_b="Person B: stands right and speaks the B lines",
    script="The dialogue (leave empty to type it in a form with line breaks)",
    script_file="The dialogue as a .txt file",
    scene="A few words about the scene, e.g. two friends in a café",
    voice_a="Voice of person A",
    voice_b="Voice of person B",
    language="Language of the dialogue",
    quality="Video quality",
    seed="A number to repeat a result",
)
@app_commands.choices(language=LANGUAGES, quality=QUALITIES)
async def talk(
    interaction: discord.Interaction,
    photo_a: discord.Attachment,
    photo_b: discord.Attachment,
    script: Optional[app_commands.Range[str, 1, DISCORD_STRING_OPTION_CHARS]] = None,
    script_file: Optional[discord.Attachment] = None,
    scene: Optional[app_commands.Range[str, 1, MAX_SCENE_CHARS]] = None,
    voice_a: Optional[str] = None,
    voice_b: Optional[str] = None,
    language: Optional[app_commands.Choice[str]] = None,
    quality: Optional[app_commands.Choice[str]] = None,
    seed: Optional[app_commands.Range[int, 0, MAX_SEED]] = None,
) -> None:
    service = service_of(interaction)
    photos: dict[PhotoSlot, discord.Attachment] = {"A": photo_a, "B": photo_b}
    _check_announced(service, photos, script_file)
    draft = await service.start_draft(
        requester_of(interaction),
        scene=scene or "",
        voice_a=voice_a,
        voice_b=voice_b,
        language=language.value if language else "auto",
        quality=quality.value if quality else None,
        seed=seed,
    )
    if script is None and script_file is None:
        downloading = asyncio.create_task(add_photos(service, draft.id, photos), name=f"photos-{draft.id}")
        downloading.add_done_callback(lambda task: task.cancelled() or task.exception())  # answered on submit
        modal = ScriptModal(draft, locale_of(interaction), service.settings, photos=downloading)
        await interaction.response.send_modal(modal)
        return
    await interaction.response.defer(ephemeral=True, thinking=True)
    await add_photos(service, draft.id, photos)
    raw: str | bytes = await download(script_file.url, _script_file_cap(service)) if script_file else script or ""
    if await check_script_into_draft(interaction, draft.id, raw):
        await present_draft(interaction, draft.id)


async def _voice_choices(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    locale = locale_of(interaction)
    return [app_commands.Choice(name=v.label(locale)[:100], value=v.id) for v in find_voices(current, locale, limit=25)]


talk.autocomplete("voice_a")(_voice_choices)
talk.autocomplete("voice_b")(_voice_choices)


@app_commands.command(description="Your videos, newest first")
async def jobs(interaction: discord.Interaction) -> None:
    records = await service_of(interaction).list_jobs(actor_of(interaction), limit=10)
    await say(interaction, jobs_text(records, locale_of(interaction)))


@app_commands.command(description="One of your videos: its status, with Cancel or Re-roll")
@app_commands.describe(job="The job id (see /jobs)")
async def show(interaction: discord.Interaction, job: str) -> None:
    service = service_of(interaction)
    record = await service.job(job, actor_of(interaction))
    status = await service.status(record)
    await say(interaction, status_text(status, locale_of(interaction)), show_actions(status))


@app_commands.command(description="Stop a video (your newest one if no id is given)")
@app_commands.describe(job="The job id (see /jobs)")
async def cancel(interaction: discord.Interaction, job: Optional[str] = None) -> None:
    service = service_of(interaction)
    actor = actor_of(interaction)
    locale = locale_of(interaction)
    status = await service.cancel(job, actor) if job else await service.cancel_latest(actor)
    await say(interaction, cancel_text(status, locale) if status is not None else text("cancel.none", locale))


async def _job_choices(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    """The person's recent jobs whose id starts with what they typed (ids are long to type)."""
    locale = locale_of(interaction)
    records = await service_of(interaction).list_jobs(actor_of(interaction), limit=25)
    return [
        app_commands.Choice(name=f"{job.id} · {text(f'state.{job.state}', locale)}"[:100], value=job.id)
        for job in records
        if job.id.startswith(current.strip())
    ]


show.autocomplete("job")(_job_choices)
cancel.autocomplete("job")(_job_choices)


@app_commands.command(description="All voices")
async def voices(interaction: discord.Interaction) -> None:
    await say(interaction, voices_text(locale_of(interaction)))


# ---- admin ------------------------------------------------------------------------------------------


async def _refuse_non_admin(interaction: discord.Interaction) -> bool:
    """True (and answered) when the caller is not on the config's allow-list, whatever their roles."""
    if service_of(interaction).is_admin(actor_of(interaction)):
        return False
    await say(interaction, text("admin.only", locale_of(interaction)))
    return True


@app_commands.command(name="queue", description="Admin: queue statistics")
@app_commands.default_permissions(administrator=True)
async def queue_stats(interaction: discord.Interaction) -> None:
    if await _refuse_non_admin(interaction):
        return
    queue = service_of(interaction).queue
    await say(interaction, queue_stats_text(await admin.stats(queue), await queue.paused(), locale_of(interaction)))


@app_commands.command(description="Admin: stop taking new videos and starting jobs")
@app_commands.default_permissions(administrator=True)
async def pause(interaction: discord.Interaction) -> None:
    if await _refuse_non_admin(interaction):
        return
    await service_of(interaction).queue.set_paused(intake=True, claims=True, reason=f"discord:{interaction.user.id}")
    await say(interaction, text("admin.paused", locale_of(interaction)))


@app_commands.command(description="Admin: take videos and start jobs again")
@app_commands.default_permissions(administrator=True)
async def resume(interaction: discord.Interaction) -> None:
    if await _refuse_non_admin(interaction):
        return
    await service_of(interaction).queue.set_paused(intake=False, claims=False)
    await say(interaction, text("admin.resumed", locale_of(interaction)))


COMMANDS = (talk, jobs, show, cancel, voices, queue_stats, pause, resume)
