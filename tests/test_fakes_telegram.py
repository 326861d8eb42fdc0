"""The fake Telegram Bot API proven with the real python-telegram-bot 22: a minimal Application
polls it, and the tests assert on the calls the fake recorded."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from fakes.fixtures import fake_telegram, running_telegram_app, telegram_app_builder  # noqa: F401
from fakes.recording import wait_until
from fakes.telegram_server import FakeTelegram, FileRef
from telegram import BotCommand, InlineKeyboardButton, InlineKeyboardMarkup, InputMediaPhoto, Update
from telegram.constants import ChatAction
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter
from telegram.ext import (
    AIORateLimiter,
    Application,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

PHOTO = b"\xff\xd8\xff\xe0JFIF-photo-bytes" * 8
VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8


@dataclass
class Seen:
    """What the proof bot observed, for assertions the wire alone cannot show."""

    downloads: list[bytes] = field(default_factory=list)
    photo_messages: list[tuple[str | None, str | None]] = field(default_factory=list)  # (media_group_id, caption)
    documents: list[tuple[str, str, bytes]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)


async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    assert update.message is not None
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Render", callback_data="duet:job:render:1")]])
    await update.message.reply_text("Preview ready", reply_markup=keyboard, do_quote=True)


async def photo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    assert update.message is not None and update.effective_chat is not None
    seen: Seen = context.bot_data["seen"]
    seen.photo_messages.append((update.message.media_group_id, update.message.caption))
    file = await update.message.photo[-1].get_file()
    seen.downloads.append(bytes(await file.download_as_bytearray()))
    if update.message.media_group_id is None:
        await context.bot.send_chat_action(update.effective_chat.id, ChatAction.UPLOAD_VIDEO)
        await update.message.reply_video(
            VIDEO, supports_streaming=True, width=960, height=960, duration=4, filename="duet.mp4"
        )


async def document(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    assert update.message is not None and update.message.document is not None
    doc = update.message.document
    data = bytes(await (await doc.get_file()).download_as_bytearray())
    context.bot_data["seen"].documents.append((doc.file_name, doc.mime_type, data))


async def count_lines(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    assert update.message is not None and update.message.text is not None
    await update.message.reply_text(f"Got {len(update.message.text.splitlines())} lines")


async def render_pressed(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    query = update.callback_query
    assert query is not None
    await query.answer()
    await query.edit_message_text(f"Rendering job {query.data.rsplit(':', 1)[-1]}")  # type: ignore[union-attr]


async def record_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    assert context.error is not None
    context.bot_data["seen"].errors.append(context.error)


async def publish_commands(application: Application) -> None:
    await application.bot.set_my_commands([BotCommand("start", "Start"), BotCommand("talk", "Make a video")])


def build_app(fake: FakeTelegram, *, rate_limiter: AIORateLimiter | None = None) -> Application:
    builder = telegram_app_builder(fake).post_init(publish_commands)
    if rate_limiter is not None:
        builder = builder.rate_limiter(rate_limiter)
    application = builder.build()
    application.bot_data["seen"] = Seen()
    application.add_handler(CommandHandler("start", start))
    application.add_handler(MessageHandler(filters.PHOTO, photo))
    application.add_handler(MessageHandler(filters.Document.ALL, document))
    application.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, count_lines))
    application.add_handler(CallbackQueryHandler(render_pressed, pattern=r"^duet:job:render:"))
    application.add_error_handler(record_error)
    return application


@pytest.fixture
def app(fake_telegram: FakeTelegram) -> Application:
    return build_app(fake_telegram)


def seen(application: Application) -> Seen:
    return application.bot_data["seen"]


async def test_command_gets_a_reply_with_an_inline_keyboard(fake_telegram: FakeTelegram, app: Application) -> None:
    async with running_telegram_app(app):
        command = fake_telegram.send_command("start")
        reply = await fake_telegram.wait_for_call("sendMessage")

    assert [c["command"] for c in fake_telegram.commands] == ["start", "talk"]
    assert reply.params["chat_id"] == fake_telegram.user.id
    assert reply.params["text"] == "Preview ready"
    assert reply.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "duet:job:render:1"
    assert reply.params["reply_parameters"]["message_id"] == command["message_id"]
    assert fake_telegram.sent_messages()[0]["reply_to_message"]["message_id"] == command["message_id"]
    assert [c.route for c in fake_telegram.calls()][:3] == ["getMe", "setMyCommands", "deleteWebhook"]


async def test_photo_is_downloaded_and_answered_with_a_streaming_video(
    fake_telegram: FakeTelegram, app: Application
) -> None:
    async with running_telegram_app(app):
        fake_telegram.send_photo(FileRef(PHOTO, width=1280, height=960))
        sent = await fake_telegram.wait_for_call("sendVideo")

    assert seen(app).downloads == [PHOTO]
    action = fake_telegram.calls("sendChatAction")[0]
    assert action.params["action"] == "upload_video" and action.at_s <= sent.at_s
    assert {k: sent.params[k] for k in ("supports_streaming", "width", "height", "duration")} == {
        "supports_streaming": True,
        "width": 960,
        "height": 960,
        "duration": 4,
    }
    video = sent.file("video")
    assert (video.filename, video.size_bytes, video.data) == ("duet.mp4", len(VIDEO), VIDEO)
    delivered = fake_telegram.sent_messages()[-1]
    assert delivered["video"]["file_size"] == len(VIDEO)
    assert fake_telegram.files[delivered["video"]["file_id"]].data == VIDEO


async def test_button_press_is_answered_then_the_message_is_edited(
    fake_telegram: FakeTelegram, app: Application
) -> None:
    async with running_telegram_app(app):
        fake_telegram.send_command("start")
        await fake_telegram.wait_for_call("sendMessage")
        preview = fake_telegram.sent_messages()[0]
        query_id = fake_telegram.press_button(preview, "duet:job:render:1")
        edit = await fake_telegram.wait_for_call("editMessageText")

    answer = fake_telegram.calls("answerCallbackQuery")[0]
    assert fake_telegram.callback_queries == {query_id: True}
    assert answer.params["callback_query_id"] == query_id and answer.at_s <= edit.at_s
    assert (edit.params["chat_id"], edit.params["message_id"]) == (preview["chat"]["id"], preview["message_id"])
    assert fake_telegram.sent_messages()[0]["text"] == "Rendering job 1"
    assert "reply_markup" not in fake_telegram.sent_messages()[0], "editing without a keyboard removes it"


async def test_text_in_a_group_is_answered_in_that_group(fake_telegram: FakeTelegram, app: Application) -> None:
    group = fake_telegram.add_group("Duet fans")
    bob = fake_telegram.add_user("Bob", language_code="zh-hans")
    async with running_telegram_app(app):
        fake_telegram.send_text("A: hi\nB: hello", user=bob, chat=group)
        reply = await fake_telegram.wait_for_call("sendMessage")

    assert (reply.params["chat_id"], reply.params["text"]) == (group["id"], "Got 2 lines")
    assert fake_telegram.sent_messages(group["id"])[0]["chat"]["type"] == "group"


async def test_media_by_upload_and_by_file_id_edits_and_deletes(fake_telegram: FakeTelegram, app: Application) -> None:
    chat_id = fake_telegram.user.id
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Re-roll", callback_data="duet:job:reroll:1")]])
    async with running_telegram_app(app):
        bot = app.bot
        uploaded = await bot.send_photo(chat_id, PHOTO, caption="A | B")
        again = await bot.send_photo(chat_id, uploaded.photo[-1].file_id)
        album = await bot.send_media_group(
            chat_id, [InputMediaPhoto(PHOTO[::-1], caption="A | B"), InputMediaPhoto(uploaded.photo[-1].file_id)]
        )
        script = await bot.send_document(chat_id, b"A: hi\n", filename="script.txt")
        await bot.edit_message_reply_markup(chat_id, uploaded.message_id, reply_markup=keyboard)
        await bot.delete_message(chat_id, script.message_id)
        with pytest.raises(BadRequest, match="not found"):
            await bot.delete_message(chat_id, script.message_id)

    first, second = fake_telegram.calls("sendPhoto")
    assert first.file("photo").data == PHOTO and first.params["caption"] == "A | B"
    assert second.files == () and again.photo[-1].file_id == uploaded.photo[-1].file_id
    assert fake_telegram.calls("sendDocument")[0].file("document").filename == "script.txt"
    assert len(fake_telegram.calls("sendMediaGroup")[0].files) == 1, "the second album item is sent by file_id"
    assert album[0].media_group_id == album[1].media_group_id is not None
    assert (album[0].caption, album[1].photo[-1].file_id) == ("A | B", uploaded.photo[-1].file_id)
    kept = {m["message_id"]: m for m in fake_telegram.sent_messages(chat_id)}
    assert script.message_id not in kept
    assert kept[uploaded.message_id]["reply_markup"]["inline_keyboard"][0][0]["text"] == "Re-roll"


async def test_album_and_document_arrive_as_telegram_sends_them(fake_telegram: FakeTelegram, app: Application) -> None:
    second = PHOTO[::-1]
    async with running_telegram_app(app):
        album = fake_telegram.send_album([FileRef(PHOTO), FileRef(second)], caption="A: hi\nB: hello")
        fake_telegram.send_document(FileRef(b"A: one\nB: two\n", mime_type="text/plain", file_name="script.txt"))
        await fake_telegram.wait_for_call("getFile", nth=3)
        await wait_until(lambda: len(seen(app).documents) == 1 and len(seen(app).downloads) == 2)

    group_id = album[0]["media_group_id"]
    assert seen(app).photo_messages == [(group_id, "A: hi\nB: hello"), (group_id, None)]
    assert seen(app).downloads == [PHOTO, second]
    assert seen(app).documents == [("script.txt", "text/plain", b"A: one\nB: two\n")]
    assert not fake_telegram.calls("sendVideo"), "album photos are collected, not answered one by one"


async def test_flood_limit_429_is_retried_by_the_rate_limiter_after_retry_after(fake_telegram: FakeTelegram) -> None:
    app = build_app(fake_telegram, rate_limiter=AIORateLimiter(max_retries=1))
    fake_telegram.rate_limit_next("sendMessage", retry_after_s=1)
    async with running_telegram_app(app):
        fake_telegram.send_command("start")
        delivered = await fake_telegram.wait_for_call(lambda c: c.route == "sendMessage" and c.status == 200)

    limited = fake_telegram.calls("sendMessage")[0]
    assert limited.status == 429
    assert delivered.at_s - limited.at_s >= 1.0
    assert not seen(app).errors


async def test_flood_limit_without_a_rate_limiter_surfaces_retry_after(
    fake_telegram: FakeTelegram, app: Application
) -> None:
    fake_telegram.rate_limit_next("sendMessage", retry_after_s=7)
    async with running_telegram_app(app):
        fake_telegram.send_command("start")
        await wait_until(lambda: bool(seen(app).errors))

    error = seen(app).errors[0]
    assert isinstance(error, RetryAfter) and "Retry in 7 seconds" in str(error)


async def test_upload_over_the_configured_limit_is_refused_with_413(
    fake_telegram: FakeTelegram, app: Application
) -> None:
    fake_telegram.upload_limit_bytes = len(VIDEO) - 1
    async with running_telegram_app(app):
        fake_telegram.send_photo(FileRef(PHOTO))
        refused = await fake_telegram.wait_for_call("sendVideo")
        await wait_until(lambda: bool(seen(app).errors))

    assert refused.status == 413
    assert isinstance(seen(app).errors[0], NetworkError) and "too large" in str(seen(app).errors[0]).lower()


async def test_injected_error_reaches_the_bot_once(fake_telegram: FakeTelegram, app: Application) -> None:
    fake_telegram.fail_method("sendMessage", 403, "Forbidden: bot was blocked by the user")
    async with running_telegram_app(app):
        fake_telegram.send_command("start")
        await wait_until(lambda: bool(seen(app).errors))
        fake_telegram.send_command("start")
        await fake_telegram.wait_for_call(lambda c: c.route == "sendMessage" and c.status == 200)

    assert isinstance(seen(app).errors[0], Forbidden)
    assert [c.status for c in fake_telegram.calls("sendMessage")] == [403, 200]


async def test_identical_edit_is_refused_as_not_modified(fake_telegram: FakeTelegram, app: Application) -> None:
    async with running_telegram_app(app):
        fake_telegram.send_command("start")
        await fake_telegram.wait_for_call("sendMessage")
        preview = fake_telegram.sent_messages()[0]
        bot = app.bot
        await bot.edit_message_text("Queued", chat_id=preview["chat"]["id"], message_id=preview["message_id"])
        with pytest.raises(BadRequest, match="not modified"):
            await bot.edit_message_text("Queued", chat_id=preview["chat"]["id"], message_id=preview["message_id"])
        with pytest.raises(BadRequest, match=r"(?i)chat not found"):
            await bot.send_message(chat_id=424242, text="nobody")


async def test_each_update_is_delivered_once_across_polls(fake_telegram: FakeTelegram, app: Application) -> None:
    async with running_telegram_app(app):
        for _ in range(3):
            fake_telegram.send_command("start")
            await asyncio.sleep(0.05)
        await fake_telegram.wait_for_call("sendMessage", nth=3)
        await asyncio.sleep(0.2)

    assert len(fake_telegram.calls("sendMessage")) == 3
    offsets = [c.params.get("offset") for c in fake_telegram.calls("getUpdates")]
    assert offsets == sorted(offsets, key=lambda o: o or 0)


async def test_restarted_bot_gets_what_arrived_while_down_and_nothing_twice(fake_telegram: FakeTelegram) -> None:
    async with running_telegram_app(build_app(fake_telegram)):
        fake_telegram.send_command("start")
        await fake_telegram.wait_for_call("sendMessage")
    while_down = fake_telegram.send_command("start")
    async with running_telegram_app(build_app(fake_telegram)):
        second = await fake_telegram.wait_for_call("sendMessage", nth=2)
        await asyncio.sleep(0.2)

    assert len(fake_telegram.calls("sendMessage")) == 2
    assert second.params["reply_parameters"]["message_id"] == while_down["message_id"]
