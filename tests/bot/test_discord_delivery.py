"""Delivery on Discord through the real discord.py and the fake: results over the upload limit (fitted copy,
signed link), a 429 waited out, and status messages that Discord would no longer let the bot edit."""

from __future__ import annotations

import io
import time

import av

import pytest
from chat_helpers import FakeEngine, make_mp4, open_service
from discord_helpers import ONE_LINE_SCRIPT, DiscordUser, custom_ids, discord_settings, queue_job, running_bot
from fakes.discord_server import ROUTE_CREATE_MESSAGE, ROUTE_EDIT_MESSAGE, FakeDiscord
from fakes.fixtures import fake_discord  # noqa: F401

from bot.core.service import BotService
from bot.delivery import EditPolicy
from bot.http import LinkSigner

MIB = 2**20


@pytest.fixture
async def service(tmp_path, fake_discord: FakeDiscord):
    service = await open_service(tmp_path, discord_settings(fake_discord))
    yield service
    await service.queue.db.dispose()


def posts(fake: FakeDiscord, *, ok: bool = True) -> list:
    return [c for c in fake.calls(ROUTE_CREATE_MESSAGE) if (c.status == 200) == ok]


async def test_a_result_over_the_upload_limit_is_sent_as_the_fitted_copy(fake_discord: FakeDiscord, service: BotService) -> None:
    job_id = await queue_job(service, fake_discord)
    engine = FakeEngine(service)
    fitted = make_mp4(0.5)
    oversized = make_mp4(0.5) + bytes(11 * MIB)  # over the guild's 10 MiB
    async with running_bot(fake_discord, service) as watcher:
        job, token = await engine.claim()
        await engine.complete(job, token, oversized, fitted=fitted)
        await watcher.tick()

    (video,) = [c for c in posts(fake_discord) if c.files]
    assert video.file("files[0]").data == fitted
    assert (await service.queue.get(job_id)).delivery_state == "delivered"
    assert not posts(fake_discord, ok=False), "nothing was refused as too large"


async def test_without_a_fitted_copy_one_is_encoded_to_fit(fake_discord: FakeDiscord, service: BotService) -> None:
    job_id = await queue_job(service, fake_discord)
    engine = FakeEngine(service)
    async with running_bot(fake_discord, service) as watcher:
        job, token = await engine.claim()
        await engine.complete(job, token, make_mp4(0.5) + bytes(11 * MIB))  # a playable MP4, padded past the limit
        await watcher.tick()

    (video,) = [c for c in posts(fake_discord) if c.files]
    sent = video.file("files[0]").data
    assert len(sent) <= 10 * MIB and sent == service.media.path(job_id, "result_fitted").read_bytes()
    assert av.open(io.BytesIO(sent)).streams.video[0].codec_context.name == "h264"


async def test_without_a_copy_that_fits_a_signed_link_is_sent(fake_discord: FakeDiscord, service: BotService) -> None:
    job_id = await queue_job(service, fake_discord)
    engine = FakeEngine(service)
    signer = LinkSigner(b"link-secret", "https://duet.example", 24 * 3600.0)
    async with running_bot(fake_discord, service, link_signer=signer, reencode=False) as watcher:
        job, token = await engine.claim()
        await engine.complete(job, token, make_mp4(0.5) + bytes(11 * MIB))
        await watcher.tick()

    (link,) = [c for c in posts(fake_discord) if "too large" in c.params["content"]]
    content = link.params["content"]
    assert content.startswith(f"<@{fake_discord.user.id}> ") and "https://duet.example/v/" in content
    assert "within 24 h" in content and "AI-generated" in content
    assert signer.verify(content.split("/v/", 1)[1].split()[0]) == (job_id, "result")
    assert not link.files
    assert custom_ids(fake_discord.messages[(await service.queue.get(job_id)).delivered_message_id]) == [
        f"duet:job:reroll:{job_id}"
    ]


async def test_a_rate_limited_delivery_is_retried_after_the_delay(fake_discord: FakeDiscord, service: BotService) -> None:
    job_id = await queue_job(service, fake_discord)
    engine = FakeEngine(service)
    mp4 = make_mp4(0.5)
    async with running_bot(fake_discord, service) as watcher:
        job, token = await engine.claim()
        await engine.complete(job, token, mp4)
        await watcher.refresh_statuses()  # the final status first, so the 429 meets the video
        fake_discord.rate_limit_next(ROUTE_CREATE_MESSAGE, retry_after_s=0.4)
        await watcher.tick()

    (limited,) = posts(fake_discord, ok=False)
    (delivered,) = [c for c in posts(fake_discord) if c.files]
    assert limited.status == 429 and limited.files, "the 429 met the upload"
    assert delivered.at_s - limited.at_s >= 0.39
    assert delivered.file("files[0]").data == mp4
    assert (await service.queue.get(job_id)).delivery_state == "delivered"


async def test_status_messages_discord_would_not_edit_are_posted_afresh(
    fake_discord: FakeDiscord, service: BotService
) -> None:
    job_id = await queue_job(service, fake_discord)
    engine = FakeEngine(service)
    async with running_bot(fake_discord, service) as watcher:
        port = watcher.port
        port.policy = EditPolicy(0.0, 0.0, fresh_message_after_s=3300.0)  # no throttle: three edits in a row
        first = await port.post_status(await service.queue.get(job_id), "Queued", ())
        await service.attach_status_message(job_id, first)
        job, token = await engine.claim()
        await watcher.tick()
        assert fake_discord.messages[first]["content"].startswith("Working"), "a fresh message is edited"

        port.clock = lambda: time.time() + 3700  # type: ignore[attr-defined]  # an hour later
        await engine.progress(job, token, "render", 0.5, "20/40")
        await watcher.tick()
        second = (await service.queue.get(job_id)).status_message_id
        assert second not in (None, first) and "20/40" in fake_discord.messages[second]["content"]

        port.clock = time.time  # type: ignore[attr-defined]
        fake_discord.fail_route(ROUTE_EDIT_MESSAGE, 400, 30046, "Maximum number of edits to messages older than 1 hour reached.")
        await engine.progress(job, token, "render", 0.9, "36/40")
        await watcher.tick()
        third = (await service.queue.get(job_id)).status_message_id

    assert third not in (None, first, second) and "36/40" in fake_discord.messages[third]["content"]
    assert [c.status for c in fake_discord.calls(ROUTE_EDIT_MESSAGE)] == [200, 400]


async def test_a_video_posted_but_not_recorded_is_found_not_posted_again(
    fake_discord: FakeDiscord, service: BotService, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = await queue_job(service, fake_discord)
    engine = FakeEngine(service)
    record = service.queue.mark_delivered
    failures = iter([ConnectionError("database went away right after the upload")])

    async def record_after_one_failure(*args, **kwargs):
        if (error := next(failures, None)) is not None:
            raise error
        return await record(*args, **kwargs)

    monkeypatch.setattr(service.queue, "mark_delivered", record_after_one_failure)
    async with running_bot(fake_discord, service) as watcher:
        job, token = await engine.claim()
        await engine.complete(job, token, make_mp4(0.5))
        await watcher.tick()  # posts, fails to record, claims again and looks before posting
        await watcher.tick()

    (video,) = [c for c in posts(fake_discord) if c.files]
    delivered = await service.queue.get(job_id)
    assert delivered.delivery_state == "delivered" and delivered.delivery_attempts == 2
    assert fake_discord.messages[delivered.delivered_message_id]["attachments"][0]["filename"] == "duet.mp4"
    assert fake_discord.calls(lambda c: c.route == "GET /channels/{channel_id}/messages" and c.status == 200)


async def test_in_a_dm_the_whole_flow_works_and_the_configured_limit_applies(tmp_path, fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    settings = discord_settings(fake, dev_guild_id=None, upload_limit_bytes=200_000)  # no dev guild: global commands
    service = await open_service(tmp_path, settings)
    dm = fake.dm_channel(fake.user)
    alice = DiscordUser(fake)
    engine = FakeEngine(service)
    fitted = make_mp4(0.5)
    try:
        async with running_bot(fake, service) as watcher:
            a, b = alice.photos()
            asked = await fake.run_slash_command("talk", {"photo_a": a, "photo_b": b, "script": ONE_LINE_SCRIPT}, channel=dm)
            notice = await alice.answer(asked, "Press Accept")
            await alice.press(notice, "duet:consent:accept:")
            preview = await alice.preview()
            job_id, status = await alice.render(preview, service)
            job, token = await engine.claim()
            await engine.complete(job, token, make_mp4(0.5) + bytes(300_000), fitted=fitted)
            await watcher.tick()
        delivered = await service.queue.get(job_id)
    finally:
        await service.queue.db.dispose()

    assert {preview["channel_id"], status["channel_id"]} == {dm.id} and delivered.spec.requester.guild_id is None
    in_dm = [c for c in posts(fake) if c.path.endswith(f"/channels/{dm.id}/messages")]
    (video,) = [c for c in in_dm if any(f.filename == "duet.mp4" for f in c.files)]
    assert video.file("files[0]").data == fitted
    assert fake.messages[delivered.delivered_message_id]["channel_id"] == dm.id
