"""What every Discord handler needs: who is asking, the service, and the few ways the bot answers.

Answers to a person go through `say` (ephemeral: only they see refusals and confirmations); what the
channel sees — the preview card, status messages, results — are regular bot messages, so they stay
editable after the interaction's 15-minute token is gone. The client's default `AllowedMentions` is
"nobody": a message pings only when it names its user explicitly (the delivery, bot/discord/port.py).
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import discord

from bot.core.actions import Action, consent_actions
from bot.core.drafts import DraftNotFound, PhotoSlot
from bot.core.errors import InputError, normalize_locale
from bot.core.preview import SPEAKER_RGB
from bot.core.service import Actor, BotService, Submission
from bot.core.status import status_actions, status_text
from bot.core.texts import error_text, size_text, text
from storage.contract import Requester
from storage.errors import DuetError

if TYPE_CHECKING:
    from bot.discord.client import DuetDiscordClient

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 60.0
EMBED_DESCRIPTION_CHARS = 4096


class FileTooLarge(InputError):
    """A download ran past its byte cap (a platform's announced size can be missing)."""

    key = "discord.file_too_large"
    templates = {
        "en": "That file is over {limit}. Send a smaller one.",
        "zh": "文件超过 {limit}。请发送更小的文件。",
    }


def client_of(interaction: discord.Interaction) -> DuetDiscordClient:
    return interaction.client  # type: ignore[return-value]


def service_of(interaction: discord.Interaction) -> BotService:
    return client_of(interaction).service


def locale_of(interaction: discord.Interaction) -> str:
    """The person's Discord client language (`zh-CN`, `zh-TW` → zh; everything else → en)."""
    return normalize_locale(str(interaction.locale))


def actor_of(interaction: discord.Interaction) -> Actor:
    return Actor("discord", str(interaction.user.id), locale_of(interaction))


def requester_of(interaction: discord.Interaction, reply_to_message_id: int | str | None = None) -> Requester:
    """Where answers go: this channel (a DM channel too), as replies to `reply_to_message_id`."""
    return Requester(
        platform="discord",
        user_id=str(interaction.user.id),
        chat_id=str(interaction.channel_id),
        guild_id=str(interaction.guild_id) if interaction.guild_id else None,
        reply_to_message_id=str(reply_to_message_id) if reply_to_message_id is not None else None,
        locale=locale_of(interaction),
    )


def view_of(actions: tuple[Action, ...], locale: str | None) -> discord.ui.View | None:
    """Buttons for `actions` (restart-proof `ActionButton`s), or None for none."""
    from bot.discord.views import ActionButton  # views answers through this module: import when used

    if not actions:
        return None
    view = discord.ui.View(timeout=None)
    for action in actions:
        view.add_item(ActionButton(action, locale))
    return view


async def say(interaction: discord.Interaction, body: str, actions: tuple[Action, ...] = ()) -> None:
    """An ephemeral answer: the initial response if there was none yet, else a follow-up (which
    replaces the "thinking…" of a defer)."""
    view = view_of(actions, locale_of(interaction))
    extra: dict[str, Any] = {"view": view} if view is not None else {}
    if interaction.response.is_done():
        await interaction.followup.send(body, ephemeral=True, **extra)
    else:
        await interaction.response.send_message(body, ephemeral=True, **extra)


async def answer_error(interaction: discord.Interaction, error: BaseException, *, where: str) -> None:
    """A refusal as an ephemeral answer in the person's language; anything unexpected is logged with a
    short reference they can quote, never shown."""
    locale = locale_of(interaction)
    if isinstance(error, InputError):
        await say(interaction, error.message(locale))
    elif isinstance(error, DraftNotFound):
        await say(interaction, text("draft.missing", locale))
    elif isinstance(error, DuetError):
        await say(interaction, error_text(error, locale))
    else:
        ref = uuid.uuid4().hex[:8]
        log.error("discord handler failed", exc_info=error, extra={"action": where, "ref": ref})
        await say(interaction, text("error.unexpected", locale, ref=ref))


def answer_errors(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """`answer_error` around a button or modal handler (slash commands use the tree's error handler)."""

    @functools.wraps(handler)
    async def wrapped(interaction: discord.Interaction, *args: Any, **kwargs: Any) -> Any:
        try:
            return await handler(interaction, *args, **kwargs)
        except Exception as error:
            await answer_error(interaction, error, where=handler.__name__)
        return None

    return wrapped


async def download(url: str, max_bytes: int) -> bytes:
    """An attachment's bytes, refusing (and stopping the transfer) past `max_bytes`. Signed CDN URLs
    expire, so inputs are downloaded when they arrive and never stored as links."""
    timeout = aiohttp.ClientTimeout(total=DOWNLOAD_TIMEOUT_S)
    buffer = io.BytesIO()
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        response.raise_for_status()
        async for chunk in response.content.iter_chunked(64 * 1024):
            if buffer.tell() + len(chunk) > max_bytes:
                raise FileTooLarge(limit=size_text(max_bytes), admin_detail=f"download over {max_bytes} bytes")
            buffer.write(chunk)
    return buffer.getvalue()


async def add_photos(service: BotService, draft_id: str, photos: dict[PhotoSlot, discord.Attachment]) -> None:
    """Download both photos at once and check each (format, size, one face) into the draft."""
    cap = service.settings.limits.max_photo_bytes
    blobs = await asyncio.gather(*(download(attachment.url, cap) for attachment in photos.values()))
    for slot, data in zip(photos, blobs):
        await service.add_photo(draft_id, slot, data)


async def present_draft(interaction: discord.Interaction, draft_id: str) -> None:
    """A complete draft → the consent notice (first use) or the preview card; then the ephemeral
    answer that ends "thinking…"."""
    service = service_of(interaction)
    locale = locale_of(interaction)
    if not await service.has_consent(actor_of(interaction)):
        await say(interaction, text("consent.notice", locale), consent_actions(draft_id))
        return
    await post_preview(interaction, draft_id)
    await say(interaction, text("preview.below", locale))


async def post_preview(interaction: discord.Interaction, draft_id: str) -> None:
    """The preview card as a regular channel message (frame, script, voices, ETA, Render/Edit/Cancel).

    It stands for the request: Render makes the job answer the card it was pressed on.
    """
    service = service_of(interaction)
    locale = locale_of(interaction)
    card = await service.preview(draft_id)
    embed = discord.Embed(
        description=card.caption(locale, max_chars=EMBED_DESCRIPTION_CHARS),
        colour=discord.Colour.from_rgb(*SPEAKER_RGB["A"]),
    )
    embed.set_image(url="attachment://preview.jpg")
    assert interaction.channel is not None
    await interaction.channel.send(  # type: ignore[union-attr]
        content=interaction.user.mention,  # names the owner without pinging (no mentions allowed)
        embed=embed,
        file=discord.File(io.BytesIO(card.image_jpeg), "preview.jpg"),
        view=view_of(card.actions, locale),
    )


async def post_job_status(interaction: discord.Interaction, submission: Submission) -> None:
    """The status message the delivery watcher keeps editing, once per job even if asked twice."""
    service = service_of(interaction)
    locale = locale_of(interaction)
    if not submission.created:
        await say(interaction, text("submitted.duplicate", locale, job_id=submission.job_id))
        if submission.status_message_id is not None:
            return
    job = await service.queue.get(submission.job_id)
    status = submission.status
    port = client_of(interaction).port
    message_id = await port.post_status(job, status_text(status, job.spec.requester.locale), status_actions(status))
    await service.attach_status_message(job.id, message_id)

