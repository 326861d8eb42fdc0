"""The Telegram front end driven like a person, through the real python-telegram-bot and the fake Bot API:
/talk to a delivered MP4, the album shortcut, cancel, re-roll, and a restart in the middle of a job."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import pytest
from chat_helpers import PHOTO_A, PHOTO_B, SCRIPT, FakeEngine, TelegramChat, make_mp4, open_service, telegram_settings
from fakes.fixtures import fake_telegram, running_telegram_app  # noqa: F401
from fakes.telegram_server import FakeTelegram, FileRef

from bot.core.drafts import DraftStore
from bot.core.service import BotService
from bot.delivery import DeliveryWatcher
from bot.telegram import conversation
from bot.telegram.app import build_application
from bot.telegram.port import TelegramPort
from storage.contract import JobState


@asynccontextmanager
async def running_bot(fake: FakeTelegram, service: BotService):
    """The bot as `duet bots` runs it (handlers, persistence, rate limiter) plus its delivery watcher,
    whose ticks the test calls so that every edit happens at a known point."""
    application = build_application(service, fake.token)
    async with running_telegram_app(application):
        port = TelegramPort(application.bot, service.settings.telegram)
        yield DeliveryWatcher(service, port, poll_interval_s=0.05)


@pytest.fixture(autouse=True)
def quick_albums(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conversation, "ALBUM_SETTLE_S", 0.2)


@pytest.fixture
async def service(tmp_path, fake_telegram: FakeTelegram):
    service = await open_service(tmp_path, telegram_settings(fake_telegram, edit_interval_private_s=0.5))
    yield service
    await service.queue.db.dispose()


async def restart(service: BotService) -> BotService:
    """A new bot process: fresh service objects over the same database, media and drafts."""
    return BotService(service.settings, service.queue, service.media, DraftStore(service.drafts.root))


async def make_preview_with_album(chat: TelegramChat, *, accept: bool = True) -> dict:
    """Album shortcut: two photos + the script as caption → (consent) → the preview card."""
    chat.fake.send_album([FileRef(PHOTO_A, width=512, height=600), FileRef(PHOTO_B, width=512, height=512)], caption=SCRIPT)
    if accept:
        notice = await chat.bot_says("Press Accept")
        chat.press(chat.message(notice), "duet:consent:accept:")
    preview = await chat.bot_says("Preview", route="sendPhoto")
    return chat.message(preview)


async def render(chat: TelegramChat, preview: dict, service: BotService) -> tuple[str, dict]:
    """Press Render; returns the job id and the status message, once the job row knows that message."""
    chat.press(preview, "duet:draft:render:")
    status = await chat.bot_says("Queued")
    job_id = sent_job_id(status.params["text"])
    for _ in range(200):
        if (await service.queue.get(job_id)).status_message_id is not None:
            break
        await asyncio.sleep(0.01)
    return job_id, chat.message(status)


def alert(call) -> bool:
    return call.route == "answerCallbackQuery" and bool(call.params.get("show_alert"))


def sent_job_id(body: str) -> str:
    return body.rsplit("Job ", 1)[1].split()[0]


async def test_talk_conversation_ends_in_a_delivered_video(fake_telegram: FakeTelegram, service: BotService) -> None:
    chat = TelegramChat(fake_telegram)
    engine = FakeEngine(service)
    mp4 = make_mp4(1.0)
    async with running_bot(fake_telegram, service) as watcher:
        talk = fake_telegram.send_command("talk")
        notice = await chat.bot_says("Press Accept")
        chat.press(chat.message(notice), "duet:consent:accept:-")
        await chat.bot_says("Send photo A")
        fake_telegram.send_photo(FileRef(PHOTO_A, width=512, height=600))
        await chat.bot_says("Now send photo B")
        fake_telegram.send_document(FileRef(PHOTO_B, mime_type="image/png", file_name="b.png"))  # "as file"
        await chat.bot_says("Now the dialogue")
        fake_telegram.send_document(FileRef(SCRIPT.encode(), mime_type="text/plain", file_name="script.txt"))
        await chat.bot_says("Describe the scene")
        fake_telegram.send_text("Two pioneers chatting in a hangar")
        voice_a = await chat.bot_says("voice of A")
        chat.press(chat.message(voice_a), "duet:voice:A:af_bella")
        voice_b = await chat.bot_says("voice of B")
        chat.press(chat.message(voice_b), "duet:voice:B:auto")
        preview_call = await chat.bot_says("Preview", route="sendPhoto")
        caption = preview_call.params["caption"]
        assert "🔵 A: Hi! We are two photos that learned to talk." in caption
        assert "🟠 B: Write a dialogue" in caption
        assert "Bella" in caption and "Adam" in caption and "hangar" in caption
        assert preview_call.file("photo").size_bytes > 10_000

        job_id, status = await render(chat, chat.message(preview_call), service)
        job = await service.queue.get(job_id)
        spec = job.spec
        assert (spec.inputs.voices.a, spec.inputs.voices.b) == ("af_bella", "am_adam")
        assert spec.inputs.scene == "Two pioneers chatting in a hangar"
        assert spec.requester.reply_to_message_id == str(talk["message_id"])
        assert job.status_message_id == str(status["message_id"])

        claimed, token = await engine.claim()
        await engine.progress(claimed, token, "render", 0.5, "20/40")
        await watcher.tick()
        edited = await chat.bot_says("animating 20/40", route="editMessageText")
        assert edited.params["message_id"] == status["message_id"]
        assert "▰" in edited.params["text"]

        await engine.complete(claimed, token, mp4)
        await watcher.tick()
        video = await fake_telegram.wait_for_call("sendVideo")
        await watcher.tick()

    assert video.file("video").data == mp4
    assert {k: video.params[k] for k in ("supports_streaming", "width", "height", "duration")} == {
        "supports_streaming": True,
        "width": 96,
        "height": 96,
        "duration": 1,
    }
    assert "AI-generated" in video.params["caption"]
    assert video.params["reply_parameters"]["message_id"] == talk["message_id"]
    assert video.params["caption_entities"][0]["type"] == "text_mention"
    assert video.params["caption_entities"][0]["user"]["id"] == fake_telegram.user.id
    assert video.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == f"duet:job:reroll:{job_id}"
    action = fake_telegram.calls("sendChatAction")[0]
    assert action.params["action"] == "upload_video" and action.at_s <= video.at_s
    assert len(fake_telegram.calls("sendVideo")) == 1
    delivered = await service.queue.get(job_id)
    assert delivered.delivery_state == "delivered"
    assert delivered.delivered_message_id == str(fake_telegram.sent_messages()[-1]["message_id"])
    final = fake_telegram.messages[(fake_telegram.user.id, status["message_id"])]
    assert final["text"].startswith("Done!") and "reply_markup" not in final


async def test_album_shortcut_goes_straight_to_the_preview(fake_telegram: FakeTelegram, service: BotService) -> None:
    chat = TelegramChat(fake_telegram)
    async with running_bot(fake_telegram, service):
        preview = await make_preview_with_album(chat)
        job_id, _ = await render(chat, preview, service)

    job = await service.queue.get(job_id)
    assert [line.speaker for line in job.spec.inputs.dialogue] == ["A", "B", "A", "B"]
    assert not fake_telegram.calls(lambda c: "Send photo A" in str(c.params.get("text"))), "the album skips the steps"


async def test_cancel_while_queued_and_while_running(fake_telegram: FakeTelegram, service: BotService) -> None:
    chat = TelegramChat(fake_telegram)
    engine = FakeEngine(service)
    async with running_bot(fake_telegram, service) as watcher:
        first, status = await render(chat, await make_preview_with_album(chat), service)
        chat.press(status, "duet:job:cancel:")
        await chat.bot_says(f"Job {first} is cancelled")
        assert (await service.queue.get(first)).state == JobState.CANCELLED
        await watcher.tick()
        await chat.bot_says("Cancelled.", route="editMessageText")

        second, _ = await render(chat, await make_preview_with_album(chat, accept=False), service)
        claimed, token = await engine.claim()
        assert claimed.id == second
        fake_telegram.send_command("cancel", second)
        await chat.bot_says(f"Stopping job {second}")
        assert await engine.progress(claimed, token, "render", 0.3) is True, "the engine sees the request"
        await service.queue.finish_cancelled(claimed.id, token)
        await watcher.tick()
        await chat.bot_says(f"Cancelled. Job {second}", route="editMessageText")


async def test_someone_elses_job_cannot_be_cancelled(fake_telegram: FakeTelegram, service: BotService) -> None:
    chat = TelegramChat(fake_telegram)
    mallory = fake_telegram.add_user("Mallory")
    async with running_bot(fake_telegram, service):
        job_id, status = await render(chat, await make_preview_with_album(chat), service)
        fake_telegram.send_command("cancel", job_id, user=mallory)
        refused = await TelegramChat(fake_telegram, mallory).bot_says("No job")
        assert job_id in refused.params["text"]
        fake_telegram.send_command("cancel", "' OR 1=1 --", user=mallory)
        await TelegramChat(fake_telegram, mallory).bot_says("No job '")
        query = chat.press(status, "duet:job:cancel:", user=mallory)
        answer = await fake_telegram.wait_for_call(alert)

    assert query.startswith("duet:job:cancel:")
    assert "Only the person" in answer.params["text"]
    assert (await service.queue.get(job_id)).state == JobState.QUEUED


async def test_reroll_makes_a_new_job_with_the_same_inputs_and_a_new_seed(
    fake_telegram: FakeTelegram, service: BotService
) -> None:
    chat = TelegramChat(fake_telegram)
    engine = FakeEngine(service)
    async with running_bot(fake_telegram, service) as watcher:
        first, _ = await render(chat, await make_preview_with_album(chat), service)
        claimed, token = await engine.claim()
        await engine.complete(claimed, token, make_mp4(0.5))
        await watcher.tick()
        await fake_telegram.wait_for_call("sendVideo")
        video_message = fake_telegram.sent_messages()[-1]
        chat.press(video_message, "duet:job:reroll:")
        again = await chat.bot_says("Queued")

    second = sent_job_id(again.params["text"])
    old, new = (await service.queue.get(first)).spec, (await service.queue.get(second)).spec
    assert second != first and new.reroll_of == first
    assert new.inputs == old.inputs and new.render.seed != old.render.seed
    assert new.requester.reply_to_message_id == str(video_message["message_id"])
    for role in ("photo_a", "photo_b", "frame"):
        assert service.media.path(second, role).read_bytes() == service.media.path(first, role).read_bytes()


async def test_restart_mid_job_resumes_the_status_message_and_delivers_once(
    fake_telegram: FakeTelegram, service: BotService
) -> None:
    chat = TelegramChat(fake_telegram)
    engine = FakeEngine(service)
    mallory = fake_telegram.add_user("Mallory")
    async with running_bot(fake_telegram, service) as watcher:
        job_id, status = await render(chat, await make_preview_with_album(chat), service)
        claimed, token = await engine.claim()
        await engine.progress(claimed, token, "render", 0.25, "10/40")
        await watcher.tick()
        await chat.bot_says("10/40", route="editMessageText")
    # The bot process is gone; the engine keeps rendering. A new process starts.
    service = await restart(service)
    async with running_bot(fake_telegram, service) as watcher:
        await engine.progress(claimed, token, "render", 0.75, "30/40")
        await watcher.tick()
        resumed = await chat.bot_says("30/40", route="editMessageText")
        assert resumed.params["message_id"] == status["message_id"]
        chat.press(status, "duet:job:cancel:", user=mallory)  # the old message's button still answers
        await fake_telegram.wait_for_call(alert)
        await engine.complete(claimed, token, make_mp4(0.5))
        await watcher.tick()
        await watcher.tick()
        await fake_telegram.wait_for_call("sendVideo")
    video_message = fake_telegram.sent_messages()[-1]
    service = await restart(service)
    async with running_bot(fake_telegram, service) as watcher:
        await watcher.tick()
        chat.press(video_message, "duet:job:reroll:")  # a button from before this restart, pressed by its owner
        again = await chat.bot_says("Queued")

    assert len(fake_telegram.calls("sendVideo")) == 1
    assert (await service.queue.get(job_id)).delivery_state == "delivered"
    assert (await service.queue.get(sent_job_id(again.params["text"]))).spec.reroll_of == job_id


async def test_conversation_resumes_after_a_restart(fake_telegram: FakeTelegram, service: BotService) -> None:
    chat = TelegramChat(fake_telegram)
    await service.record_consent(service_actor(fake_telegram))
    async with running_bot(fake_telegram, service):
        fake_telegram.send_command("talk")
        await chat.bot_says("Send photo A")
        fake_telegram.send_photo(FileRef(PHOTO_A, width=512, height=600))
        await chat.bot_says("Now send photo B")
    service = await restart(service)
    async with running_bot(fake_telegram, service):
        fake_telegram.send_photo(FileRef(PHOTO_B, width=512, height=512))
        await chat.bot_says("Now the dialogue")


def service_actor(fake: FakeTelegram):
    from bot.core.service import Actor

    return Actor("telegram", str(fake.user.id))


async def test_edit_keeps_the_photos_and_asks_for_a_new_script_and_discard_drops_the_draft(
    fake_telegram: FakeTelegram, service: BotService
) -> None:
    chat = TelegramChat(fake_telegram)
    async with running_bot(fake_telegram, service):
        preview = await make_preview_with_album(chat)
        chat.press(preview, "duet:draft:edit:")
        await chat.bot_says("Now the dialogue")
        fake_telegram.send_text("A: New first line.\nB: And a new answer.")
        await chat.bot_says("Describe the scene")
        fake_telegram.send_command("skip")
        chat.press(chat.message(await chat.bot_says("voice of A")), "duet:voice:A:auto")
        chat.press(chat.message(await chat.bot_says("voice of B")), "duet:voice:B:auto")
        edited = chat.message(await chat.bot_says("New first line", route="sendPhoto"))
        draft_id = chat.press(edited, "duet:draft:discard:").rsplit(":", 1)[1]
        await chat.bot_says("Stopped. Nothing was rendered.")
        assert "reply_markup" not in fake_telegram.messages[(fake_telegram.user.id, preview["message_id"])]
        assert not (service.drafts.root / draft_id).exists()
    assert await service.queue.list_jobs() == []


async def test_jobs_show_and_voices(fake_telegram: FakeTelegram, service: BotService) -> None:
    chat = TelegramChat(fake_telegram)
    async with running_bot(fake_telegram, service):
        fake_telegram.send_command("jobs")
        await chat.bot_says("You have no videos yet")
        job_id, _ = await render(chat, await make_preview_with_album(chat), service)
        fake_telegram.send_command("jobs")
        listing = await chat.bot_says("Your videos")
        assert f"{job_id} · queued" in listing.params["text"]
        fake_telegram.send_command("show", job_id)
        shown = await chat.bot_says(f"Job {job_id}")
        assert shown.params["text"].startswith("Queued — position 1")
        assert shown.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == f"duet:job:cancel:{job_id}"
        fake_telegram.send_command("voices")
        voices = await chat.bot_says("af_heart")
        assert "zf_xiaoxiao" in voices.params["text"]


async def test_a_failed_render_is_told_kindly_with_the_job_id(fake_telegram: FakeTelegram, service: BotService) -> None:
    chat = TelegramChat(fake_telegram)
    engine = FakeEngine(service)
    async with running_bot(fake_telegram, service) as watcher:
        job_id, status = await render(chat, await make_preview_with_album(chat), service)
        claimed, token = await engine.claim()
        await service.queue.fail(
            claimed.id, token, error_user="The speech could not be made.", error_admin="kokoro: NaN", retryable=False
        )
        await watcher.tick()
        told = await chat.bot_says("could not be made", route="editMessageText")

    assert told.params["message_id"] == status["message_id"]
    assert "The speech could not be made." in told.params["text"] and job_id in told.params["text"]
    assert "kokoro" not in told.params["text"], "admin detail stays in the job"
    assert not fake_telegram.calls("sendVideo")
