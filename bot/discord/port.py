"""Discord's side of the delivery watcher (`bot.delivery.PlatformPort`).

Status messages and results are regular channel messages sent with the bot token (interaction tokens
die after 15 minutes; a render takes longer), as replies to the job's request (the preview card, or the
video a Re-roll was pressed on). Only the result mentions anyone, and `AllowedMentions` lets that
mention reach its own user only. A message's age comes from its snowflake id: Discord refuses edits
of messages older than an hour (30046), so the watcher posts a fresh status message before that.

Exactly once: a result is sent with a nonce derived from the job id, which discord.py sends with
`enforce_nonce`, so a re-post within Discord's dedup window returns the first message instead of a
second one; past it, `find_delivered` looks for the bot's message carrying the job's Re-roll button.
"""

from __future__ import annotations

import datetime as dt
import time

import discord

from bot.core.actions import Action, Verb
from bot.delivery import EditPolicy, MessageGone, VideoFile
from bot.discord.replies import view_of
from storage.queue import JobRecord
from storage.settings import DiscordSettings

TOO_OLD_TO_EDIT = 30046  # "Maximum number of edits to messages older than 1 hour reached"
HISTORY_SCAN_LIMIT = 100


def job_nonce(job_id: str) -> str:
    """Discord nonces are at most 25 characters; the job's UUID without dashes, cut to that."""
    return job_id.replace("-", "")[:25]


class DiscordPort:
    platform = "discord"

    def __init__(self, client: discord.Client, settings: DiscordSettings, *, clock=time.time) -> None:
        self.client = client
        self.settings = settings
        self.policy = EditPolicy.discord(settings)
        self.clock = clock

    # ---- what the watcher asks -----------------------------------------------------------------------

    def upload_limit_bytes(self, job: JobRecord) -> int:
        """The guild's limit (boosts raise it), else the configured one (DMs: 10 MiB by default)."""
        guild_id = job.spec.requester.guild_id
        guild = self.client.get_guild(int(guild_id)) if guild_id else None
        return guild.filesize_limit if guild is not None else self.settings.upload_limit_bytes

    def is_group_chat(self, job: JobRecord) -> bool:
        return job.spec.requester.guild_id is not None

    def message_age_s(self, message_id: str) -> float | None:
        return self.clock() - discord.utils.snowflake_time(int(message_id)).timestamp()

    def mention(self, job: JobRecord) -> str:
        return f"<@{job.spec.requester.user_id}>"

    # ---- messages --------------------------------------------------------------------------------------

    def _channel(self, job: JobRecord) -> discord.PartialMessageable:
        return self.client.get_partial_messageable(int(job.chat_id))

    def _reply_to(self, job: JobRecord) -> discord.MessageReference | None:
        reply_to = job.spec.requester.reply_to_message_id
        if reply_to is None:
            return None
        return discord.MessageReference(message_id=int(reply_to), channel_id=int(job.chat_id), fail_if_not_exists=False)

    def _only_the_owner(self, job: JobRecord) -> discord.AllowedMentions:
        owner = discord.Object(int(job.spec.requester.user_id))
        return discord.AllowedMentions(everyone=False, roles=False, users=[owner], replied_user=False)

    async def post_status(self, job: JobRecord, text: str, actions: tuple[Action, ...]) -> str:
        view = view_of(actions, job.spec.requester.locale)
        message = await self._channel(job).send(
            text, reference=self._reply_to(job), allowed_mentions=discord.AllowedMentions.none(), **_view(view)
        )
        return str(message.id)

    async def edit_status(self, job: JobRecord, message_id: str, text: str, actions: tuple[Action, ...]) -> None:
        message = self._channel(job).get_partial_message(int(message_id))
        try:
            await message.edit(content=text, view=view_of(actions, job.spec.requester.locale))
        except discord.NotFound as error:
            raise MessageGone(message_id) from error
        except discord.HTTPException as error:
            if error.code == TOO_OLD_TO_EDIT:
                raise MessageGone(message_id) from error
            raise

    async def send_video(self, job: JobRecord, video: VideoFile, caption: str, actions: tuple[Action, ...]) -> str:
        message = await self._channel(job).send(
            caption,
            file=discord.File(video.path, filename=video.filename, description="AI-generated video"),
            reference=self._reply_to(job),
            allowed_mentions=self._only_the_owner(job),
            nonce=job_nonce(job.id),
            **_view(view_of(actions, job.spec.requester.locale)),
        )
        return str(message.id)

    async def send_text(self, job: JobRecord, text: str, actions: tuple[Action, ...]) -> str:
        message = await self._channel(job).send(
            text,
            reference=self._reply_to(job),
            allowed_mentions=self._only_the_owner(job),
            nonce=job_nonce(job.id),
            **_view(view_of(actions, job.spec.requester.locale)),
        )
        return str(message.id)

    async def find_delivered(self, job: JobRecord) -> str | None:
        """The bot's message with this job's Re-roll button, posted since the job finished."""
        reroll = Action(Verb.REROLL, job.id).custom_id
        since = dt.datetime.fromtimestamp((job.finished_at or job.created_at) - 1, dt.UTC)
        async for message in self._channel(job).history(limit=HISTORY_SCAN_LIMIT, after=since):
            if self.client.user is not None and message.author.id != self.client.user.id:
                continue
            buttons = [child for row in message.components for child in getattr(row, "children", ())]
            if any(getattr(button, "custom_id", None) == reroll for button in buttons):
                return str(message.id)
        return None


def _view(view: discord.ui.View | None) -> dict:
    """`send(view=None)` is refused by discord.py; leave the argument out instead."""
    return {"view": view} if view is not None else {}
