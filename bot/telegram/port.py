"""Telegram's side of the delivery watcher (`bot.delivery.PlatformPort`) and the inline keyboards.

Status messages and results are plain text (no parse mode), so a script echoed into them is inert. A
result is a reply to the user's request; the leading mention is a `text_mention` entity on the user's
id (it notifies them in a group without needing their username). `find_delivered` always answers None:
the Bot API cannot read a chat's history, so after a crash in the seconds between posting and recording
a delivery, one duplicate is possible (see bot/delivery.py).
"""

from __future__ import annotations

import asyncio
import contextlib

from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, MessageEntity, ReplyParameters, User
from telegram.constants import ChatAction, MessageEntityType
from telegram.error import BadRequest

from bot.core.actions import Action
from bot.delivery import EditPolicy, MessageGone, VideoFile
from storage.queue import JobRecord
from storage.settings import TelegramSettings

MENTION = "🔔"
CHAT_ACTION_REPEAT_S = 4.5  # Telegram shows a chat action for 5 s


def keyboard(actions: tuple[Action, ...], locale: str | None) -> InlineKeyboardMarkup | None:
    """One row of buttons, or None (which removes a keyboard when editing)."""
    if not actions:
        return None
    return InlineKeyboardMarkup([[InlineKeyboardButton(a.label(locale), callback_data=a.custom_id) for a in actions]])


def _utf16_length(value: str) -> int:
    return len(value.encode("utf-16-le")) // 2


def _is_not_modified(error: BadRequest) -> bool:
    return "not modified" in error.message.lower()


def _is_gone(error: BadRequest) -> bool:
    message = error.message.lower()
    return "message to edit not found" in message or "can't be edited" in message


class TelegramPort:
    platform = "telegram"

    def __init__(self, bot: Bot, settings: TelegramSettings) -> None:
        self.bot = bot
        self.settings = settings
        self.policy = EditPolicy.telegram(settings)

    def upload_limit_bytes(self, job: JobRecord) -> int:
        return self.settings.upload_limit_bytes

    def is_group_chat(self, job: JobRecord) -> bool:
        return job.chat_id.startswith("-")  # Telegram group and channel ids are negative

    def message_age_s(self, message_id: str) -> float | None:
        return None  # Telegram lets a bot edit its messages for as long as they exist

    def mention(self, job: JobRecord) -> str:
        return MENTION

    def _entities(self, job: JobRecord, body: str) -> list[MessageEntity] | None:
        if not body.startswith(MENTION):
            return None
        user = User(id=int(job.spec.requester.user_id), first_name="", is_bot=False)
        return [MessageEntity(MessageEntityType.TEXT_MENTION, 0, _utf16_length(MENTION), user=user)]

    def _reply_to(self, job: JobRecord) -> ReplyParameters | None:
        reply_to = job.spec.requester.reply_to_message_id
        if reply_to is None:
            return None
        return ReplyParameters(message_id=int(reply_to), allow_sending_without_reply=True)

    async def post_status(self, job: JobRecord, text: str, actions: tuple[Action, ...]) -> str:
        message = await self.bot.send_message(
            int(job.chat_id),
            text,
            reply_markup=keyboard(actions, job.spec.requester.locale),
            reply_parameters=self._reply_to(job),
        )
        return str(message.message_id)

    async def edit_status(self, job: JobRecord, message_id: str, text: str, actions: tuple[Action, ...]) -> None:
        try:
            await self.bot.edit_message_text(
                text,
                chat_id=int(job.chat_id),
                message_id=int(message_id),
                reply_markup=keyboard(actions, job.spec.requester.locale),
            )
        except BadRequest as error:
            if _is_not_modified(error):
                return
            if _is_gone(error):
                raise MessageGone(message_id) from error
            raise

    async def send_video(self, job: JobRecord, video: VideoFile, caption: str, actions: tuple[Action, ...]) -> str:
        chat_id = int(job.chat_id)
        with contextlib.suppress(Exception):  # a missing chat action must not stop the delivery
            await self.bot.send_chat_action(chat_id, ChatAction.UPLOAD_VIDEO)
        uploading = asyncio.create_task(self._keep_uploading(chat_id), name=f"upload-action-{job.id}")
        try:
            with open(video.path, "rb") as handle:
                message = await self.bot.send_video(
                    chat_id,
                    handle,
                    duration=round(video.duration_s),
                    width=video.width,
                    height=video.height,
                    supports_streaming=True,
                    caption=caption,
                    caption_entities=self._entities(job, caption),
                    reply_markup=keyboard(actions, job.spec.requester.locale),
                    reply_parameters=self._reply_to(job),
                    filename=video.filename,
                    read_timeout=300,
                    write_timeout=300,
                )
        finally:
            uploading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await uploading
        return str(message.message_id)

    async def _keep_uploading(self, chat_id: int) -> None:
        """Keep “sending a video…” in the chat header for as long as the upload takes."""
        while True:
            await asyncio.sleep(CHAT_ACTION_REPEAT_S)
            with contextlib.suppress(Exception):
                await self.bot.send_chat_action(chat_id, ChatAction.UPLOAD_VIDEO)

    async def send_text(self, job: JobRecord, text: str, actions: tuple[Action, ...]) -> str:
        message = await self.bot.send_message(
            int(job.chat_id),
            text,
            entities=self._entities(job, text),
            reply_markup=keyboard(actions, job.spec.requester.locale),
            reply_parameters=self._reply_to(job),
            link_preview_options=None,
        )
        return str(message.message_id)

    async def find_delivered(self, job: JobRecord) -> str | None:
        return None
