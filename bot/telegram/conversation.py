"""The `/talk` conversation: photo A → photo B → script → scene or /skip → voices → preview.

Each step is one handler that parses the update, hands it to `BotService`, answers and returns the next
step; a refused input is answered and the step stays (nothing given so far is lost). The conversation
is persistent (named, `persistent=True`) and holds only the draft id in `user_data`; the draft itself is
on disk (bot/core/drafts.py), so a restart in the middle of it goes on where the user was. After the
preview the conversation ends: Render / Edit / Cancel carry the draft id and work on their own
(bot/telegram/commands.py), Edit re-enters here at the script step.

The album shortcut (two photos sent together, the script as caption) is collected outside the
conversation: Telegram delivers an album as one update per photo sharing a `media_group_id`.
"""

from __future__ import annotations

import asyncio
import re
import warnings
from enum import IntEnum

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.ext import (
    ApplicationHandlerStop,
    CallbackQueryHandler,
    CommandHandler,
    ConversationHandler,
    MessageHandler,
    filters,
)
from telegram.warnings import PTBUserWarning

from bot.core.actions import Verb, parse_action
from bot.core.drafts import DraftNotFound, PhotoSlot
from bot.core.texts import text
from bot.core.voices import list_voices
from bot.telegram.replies import (
    Context,
    actor_of,
    answer_errors,
    locale_of,
    reply,
    requester_of,
    send_consent_notice,
    send_preview,
    service_of,
)

ALBUM_SETTLE_S = 1.0  # an album's photos arrive as separate updates within a fraction of a second
MAX_SCRIPT_FILE_BYTES = 256 * 1024
MAX_SCENE_CHARS = 500
VOICE_CHOICES = ("af_heart", "af_bella", "am_adam", "am_michael", "zf_xiaoxiao", "zm_yunxi")
_VOICE_DATA = r"^duet:voice:(?P<speaker>[AB]):(?P<voice>[a-z_]+)$"


class Step(IntEnum):
    CONSENT = 0
    PHOTO_A = 1
    PHOTO_B = 2
    SCRIPT = 3
    SCENE = 4
    VOICE_A = 5
    VOICE_B = 6


def _draft_id(context: Context) -> str:
    draft_id = context.user_data.get("draft_id") if context.user_data is not None else None
    if draft_id is None:  # conversation state without its draft (state files restored separately)
        raise DraftNotFound("")
    return draft_id


async def _new_draft(update: Update, context: Context, request_message_id: int) -> Step:
    state = await service_of(context).start_draft(requester_of(update, request_message_id))
    context.user_data["draft_id"] = state.id  # type: ignore[index]
    await reply(update, text("ask.photo_a", locale_of(update)))
    return Step.PHOTO_A


@answer_errors
async def talk(update: Update, context: Context) -> Step:
    """/talk: the consent notice on first use, else a new draft and the ask for photo A."""
    assert update.message is not None
    if not await service_of(context).has_consent(actor_of(update)):
        context.user_data["talk_message_id"] = update.message.message_id  # type: ignore[index]
        await send_consent_notice(update)
        return Step.CONSENT
    return await _new_draft(update, context, update.message.message_id)


@answer_errors
async def accept_consent(update: Update, context: Context) -> Step:
    """Accept pressed during /talk: remember it, then start the draft as if /talk came now."""
    query = update.callback_query
    assert query is not None and query.message is not None
    await query.answer()
    await service_of(context).record_consent(actor_of(update))
    await query.edit_message_reply_markup(None)
    await reply(update, text("consent.thanks", locale_of(update)))
    talk_message_id = context.user_data.pop("talk_message_id", query.message.message_id)  # type: ignore[union-attr]
    return await _new_draft(update, context, talk_message_id)


async def download_photo(update: Update, context: Context, slot: PhotoSlot) -> bytes | None:
    """The photo's bytes (sent as a photo or as a file), refused by its announced size or type before
    downloading; the bytes themselves are judged by `add_photo`."""
    message = update.message
    assert message is not None
    media = message.photo[-1] if message.photo else message.document
    if media is None:
        await reply(update, text("ask.photo_again", locale_of(update), photo=slot))
        return None
    service_of(context).check_announced_photo(media.file_size, getattr(media, "mime_type", None), slot)
    return bytes(await (await media.get_file()).download_as_bytearray())


async def _photo_step(update: Update, context: Context, slot: PhotoSlot) -> bool:
    data = await download_photo(update, context, slot)
    if data is None:
        return False
    await service_of(context).add_photo(_draft_id(context), slot, data)
    return True


@answer_errors
async def photo_a(update: Update, context: Context) -> Step | None:
    """Photo A checked (format, size, one face) and kept; asks for photo B."""
    if not await _photo_step(update, context, "A"):
        return None
    await reply(update, text("ask.photo_b", locale_of(update)))
    return Step.PHOTO_B


@answer_errors
async def photo_b(update: Update, context: Context) -> Step | None:
    """Photo B checked and kept; asks for the script."""
    if not await _photo_step(update, context, "B"):
        return None
    await reply(update, text("ask.script", locale_of(update)))
    return Step.SCRIPT


@answer_errors
async def script(update: Update, context: Context) -> Step | None:
    """The dialogue as text or a .txt file, parsed now (speakers, limits); asks for the scene."""
    message = update.message
    assert message is not None
    raw: str | bytes
    if message.document is not None:
        if (message.document.file_size or 0) > MAX_SCRIPT_FILE_BYTES:
            await reply(update, text("ask.script_again", locale_of(update)))
            return None
        raw = bytes(await (await message.document.get_file()).download_as_bytearray())
    else:
        raw = message.text or ""
    await service_of(context).set_script(_draft_id(context), raw)
    await reply(update, text("ask.scene", locale_of(update)))
    return Step.SCENE


def _voice_keyboard(speaker: str, locale: str) -> InlineKeyboardMarkup:
    voices = {voice.id: voice for voice in list_voices()}
    buttons = [
        InlineKeyboardButton(voices[v].display_name, callback_data=f"duet:voice:{speaker}:{v}") for v in VOICE_CHOICES
    ]
    auto = InlineKeyboardButton(text("button.voice_auto", locale), callback_data=f"duet:voice:{speaker}:auto")
    return InlineKeyboardMarkup([buttons[:3], buttons[3:], [auto]])


async def _ask_voice(update: Update, speaker: str) -> None:
    locale = locale_of(update)
    await reply(update, text("ask.voice", locale, speaker=speaker), markup=_voice_keyboard(speaker, locale))


@answer_errors
async def scene(update: Update, context: Context) -> Step:
    """The scene description (or /skip); asks for A's voice."""
    message = update.message
    assert message is not None
    description = "" if (message.text or "").startswith("/skip") else (message.text or "")[:MAX_SCENE_CHARS]
    await service_of(context).update_draft(_draft_id(context), scene=description.strip())
    await _ask_voice(update, "A")
    return Step.VOICE_A


async def _chosen_voice(update: Update, context: Context) -> tuple[str, str | None]:
    query = update.callback_query
    assert query is not None and query.data is not None
    await query.answer()
    match = re.fullmatch(_VOICE_DATA, query.data)
    assert match is not None, "the handler's pattern matched"
    speaker, voice = match["speaker"], match["voice"]
    await query.edit_message_reply_markup(None)
    return speaker, None if voice == "auto" else voice


@answer_errors
async def voice_a(update: Update, context: Context) -> Step:
    """A's voice chosen; asks for B's."""
    _, voice = await _chosen_voice(update, context)
    await service_of(context).update_draft(_draft_id(context), voice_a=voice)
    await _ask_voice(update, "B")
    return Step.VOICE_B


@answer_errors
async def voice_b(update: Update, context: Context) -> int:
    """B's voice chosen; shows the preview card and ends the conversation (the card's buttons take over)."""
    _, voice = await _chosen_voice(update, context)
    draft_id = _draft_id(context)
    await service_of(context).update_draft(draft_id, voice_b=voice)
    await send_preview(update, context, draft_id)
    return ConversationHandler.END


@answer_errors
async def edit(update: Update, context: Context) -> Step | None:
    """Edit on a preview: keep the photos, ask for the script again."""
    query = update.callback_query
    assert query is not None and query.data is not None
    await query.answer()
    action = parse_action(query.data)
    assert action is not None and action.verb == Verb.EDIT
    state = await service_of(context).draft(action.target, actor_of(update))
    await query.edit_message_reply_markup(None)  # this preview is out of date from now on
    context.user_data["draft_id"] = state.id  # type: ignore[index]
    await reply(update, text("ask.script", locale_of(update)))
    return Step.SCRIPT


@answer_errors
async def stop(update: Update, context: Context) -> int:
    """/cancel inside the conversation: drop the draft, nothing was rendered."""
    draft_id = context.user_data.pop("draft_id", None)  # type: ignore[union-attr]
    if draft_id is not None:
        await service_of(context).discard_draft(draft_id, actor_of(update))
    await reply(update, text("conversation.cancelled", locale_of(update)))
    return ConversationHandler.END


def _ask_again(key: str, **params: str) -> MessageHandler:
    """Something that is not what this step asks for: say again what is expected; the step stays."""

    async def ask_again(update: Update, context: Context) -> None:
        await reply(update, text(key, locale_of(update), **params))

    return MessageHandler(filters.ALL & ~filters.COMMAND, ask_again)


PHOTO_INPUT = filters.PHOTO | filters.Document.ALL
SCRIPT_INPUT = (filters.TEXT & ~filters.COMMAND) | filters.Document.ALL


def talk_conversation() -> ConversationHandler:
    # The voice keyboard belongs to the user's conversation, not to one message; PTB warns that
    # CallbackQueryHandlers are then tracked per user, which is exactly what is meant here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=PTBUserWarning, message=".*per_message.*")
        return ConversationHandler(
            entry_points=[
                CommandHandler("talk", talk),
                CallbackQueryHandler(edit, pattern=rf"^duet:draft:{Verb.EDIT.value}:"),
            ],
            states={
                Step.CONSENT: [
                    CallbackQueryHandler(accept_consent, pattern=r"^duet:consent:accept:-$"),
                    _ask_again("consent.required"),
                ],
                Step.PHOTO_A: [MessageHandler(PHOTO_INPUT, photo_a), _ask_again("ask.photo_again", photo="A")],
                Step.PHOTO_B: [MessageHandler(PHOTO_INPUT, photo_b), _ask_again("ask.photo_again", photo="B")],
                Step.SCRIPT: [MessageHandler(SCRIPT_INPUT, script), _ask_again("ask.script_again")],
                Step.SCENE: [
                    MessageHandler(filters.TEXT & ~filters.COMMAND, scene),
                    CommandHandler("skip", scene),
                    _ask_again("ask.scene"),
                ],
                Step.VOICE_A: [CallbackQueryHandler(voice_a, pattern=r"^duet:voice:A:")],
                Step.VOICE_B: [CallbackQueryHandler(voice_b, pattern=r"^duet:voice:B:")],
            },
            fallbacks=[CommandHandler("cancel", stop), CommandHandler("talk", talk)],
            name="talk",
            persistent=True,
            allow_reentry=True,
        )


# ---- the album shortcut ---------------------------------------------------------------------------


async def collect_album(update: Update, context: Context) -> None:
    """One photo of an album: kept until the album settles, then handled as a whole (below)."""
    message = update.message
    if message is None or message.media_group_id is None:
        return  # a single photo: the /talk steps handle it
    albums: dict[str, list[Update]] = context.bot_data.setdefault("albums", {})
    items = albums.setdefault(message.media_group_id, [])
    items.append(update)
    if len(items) == 1:
        context.application.create_task(_settle_album(context, message.media_group_id), update=update)
    raise ApplicationHandlerStop  # an album never feeds the /talk steps one photo at a time


async def _settle_album(context: Context, group_id: str) -> None:
    await asyncio.sleep(ALBUM_SETTLE_S)
    items = sorted(context.bot_data["albums"].pop(group_id), key=lambda u: u.message.message_id)
    await handle_album(items[0], context, items)


@answer_errors
async def handle_album(update: Update, context: Context, items: list[Update]) -> None:
    """Two photos with the dialogue as caption → a draft → the preview (after consent on first use)."""
    captions = [u.message.caption for u in items if u.message.caption]
    if len(items) != 2 or not captions:
        await reply(update, text("album.incomplete", locale_of(update)))
        return
    service = service_of(context)
    state = await service.start_draft(requester_of(update, update.message.message_id))  # type: ignore[union-attr]
    for slot, item in zip(("A", "B"), items):
        data = await download_photo(item, context, slot)  # type: ignore[arg-type]
        if data is None:
            return
        await service.add_photo(state.id, slot, data)  # type: ignore[arg-type]
    await service.set_script(state.id, captions[0])
    if not await service.has_consent(actor_of(update)):
        await send_consent_notice(update, state.id)
        return
    await send_preview(update, context, state.id)


def album_handler() -> MessageHandler:
    """Register in a group before the conversation's, so that album photos never reach its steps."""
    return MessageHandler(filters.PHOTO | filters.Document.ALL, collect_album)
