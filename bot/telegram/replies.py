"""What every Telegram handler needs: who is asking, the service, and the few ways the bot answers.

Handlers parse an update, call `BotService`, and answer through these helpers; refusals of any kind
become one plain-text reply in the user's language (`answer_errors`), so a bad photo or script never
ends the conversation or loses what was already given.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from telegram import InlineKeyboardMarkup, Message, ReplyParameters, Update
from telegram.ext import ContextTypes

from bot.core.actions import consent_actions
from bot.core.drafts import DraftNotFound
from bot.core.errors import InputError, normalize_locale
from bot.core.service import Actor, BotService, Submission
from bot.core.status import status_actions, status_text
from bot.core.texts import error_text, text
from bot.telegram.port import keyboard
from storage.contract import Requester
from storage.errors import DuetError

log = logging.getLogger(__name__)
Context = ContextTypes.DEFAULT_TYPE


def service_of(context: Context) -> BotService:
    return context.application.bot_data["service"]


def locale_of(update: Update) -> str:
    user = update.effective_user
    return normalize_locale(user.language_code if user else None)


def actor_of(update: Update) -> Actor:
    user = update.effective_user
    assert user is not None, "handlers are registered for user updates only"
    return Actor("telegram", str(user.id), locale_of(update))


def requester_of(update: Update, reply_to_message_id: int) -> Requester:
    """Where the answer goes: this chat, as a reply to the user's request message."""
    assert update.effective_user is not None and update.effective_chat is not None
    return Requester(
        platform="telegram",
        user_id=str(update.effective_user.id),
        chat_id=str(update.effective_chat.id),
        reply_to_message_id=str(reply_to_message_id),
        locale=locale_of(update),
    )


async def reply(update: Update, body: str, actions=(), *, markup: InlineKeyboardMarkup | None = None) -> Message:
    """A plain-text message in the update's chat, as a reply to the user's message when there is one.
    Buttons come from `actions`, or a ready `markup` for keyboards that are not actions (voices)."""
    chat = update.effective_chat
    assert chat is not None
    message = update.effective_message
    reply_to = (
        ReplyParameters(message_id=message.message_id, allow_sending_without_reply=True)
        if message is not None and update.callback_query is None
        else None
    )
    return await chat.send_message(
        body, reply_markup=markup or keyboard(tuple(actions), locale_of(update)), reply_parameters=reply_to
    )


def answer_errors(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Turn refusals into a reply in the user's language; the handler's state is kept (returns None).

    Unexpected exceptions are logged with a short reference the user can quote, never shown.
    """

    @functools.wraps(handler)
    async def wrapped(update: Update, context: Context, *args: Any) -> Any:
        locale = locale_of(update)
        try:
            return await handler(update, context, *args)
        except InputError as error:
            await reply(update, error.message(locale))
        except DraftNotFound:
            await reply(update, text("draft.missing", locale))
        except DuetError as error:
            await reply(update, error_text(error, locale))
        except Exception:
            ref = uuid.uuid4().hex[:8]
            log.exception("telegram handler failed", extra={"action": handler.__name__, "ref": ref})
            await reply(update, text("error.unexpected", locale, ref=ref))
        return None

    return wrapped


async def log_error(update: object, context: Context) -> None:
    """Errors outside `answer_errors` (network trouble while polling, a failed answer): logged only."""
    log.error("telegram update failed", exc_info=context.error, extra={"action": "telegram_error"})


async def send_consent_notice(update: Update, draft_id: str | None = None) -> None:
    await reply(update, text("consent.notice", locale_of(update)), consent_actions(draft_id))


async def send_preview(update: Update, context: Context, draft_id: str) -> None:
    """The preview card: the composed frame with the script, voices and ETA as its caption."""
    card = await service_of(context).preview(draft_id)
    locale = locale_of(update)
    chat = update.effective_chat
    assert chat is not None
    await chat.send_photo(
        card.image_jpeg,
        caption=card.caption(locale),
        reply_markup=keyboard(card.actions, locale),
        filename="preview.jpg",
    )


async def post_job_status(update: Update, context: Context, submission: Submission) -> None:
    """Post the status message the watcher will keep editing (once per job, even if asked twice)."""
    locale = locale_of(update)
    if not submission.created:
        await reply(update, text("submitted.duplicate", locale, job_id=submission.job_id))
        if submission.status_message_id is not None:
            return
    status = submission.status
    message = await reply(update, status_text(status, locale), status_actions(status))
    await service_of(context).attach_status_message(submission.job_id, str(message.message_id))
