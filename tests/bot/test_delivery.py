"""The delivery watcher: throttled status edits, fresh messages, exactly-once delivery, oversized results
(fitted copy, re-encode, signed link), flood limits and failures."""

from __future__ import annotations

import asyncio
import io
import itertools

import av
import pytest
from aiohttp.test_utils import TestClient, TestServer
from chat_helpers import FakeEngine, make_mp4, open_service, queue_sample_job, telegram_settings
from fakes.fixtures import fake_telegram, running_telegram_app  # noqa: F401
from fakes.telegram_server import FakeTelegram

from bot.core.service import Actor, BotService
from bot.delivery import DeliveryMetrics, DeliveryWatcher, EditPolicy, MessageGone, VideoFile
from bot.http import LinkSigner, build_http_app
from bot.telegram.app import build_application
from bot.telegram.port import TelegramPort
from storage.contract import Requester
from storage.queue import JobRecord
from storage.settings import Settings

OWNER = Actor("telegram", "1001")


async def submit(service: BotService, *, chat_id: str = "1001") -> str:
    return await queue_sample_job(service, Requester(platform="telegram", user_id=OWNER.user_id, chat_id=chat_id))


class RecordingPort:
    """A PlatformPort that records what the watcher asked for (the watcher's logic, without a platform)."""

    platform = "telegram"

    def __init__(self, policy: EditPolicy, *, limit: int = 50_000_000) -> None:
        self.policy = policy
        self.limit = limit
        self.posts: list[tuple[str, str]] = []
        self.edits: list[tuple[str, str]] = []
        self.videos: list[VideoFile] = []
        self.texts: list[str] = []
        self.ages: dict[str, float] = {}
        self.gone: set[str] = set()
        self.already_posted: str | None = None
        self.fail_videos = 0
        self._ids = itertools.count(100)

    def upload_limit_bytes(self, job: JobRecord) -> int:
        return self.limit

    def is_group_chat(self, job: JobRecord) -> bool:
        return job.chat_id.startswith("-")

    def message_age_s(self, message_id: str) -> float | None:
        return self.ages.get(message_id)

    def mention(self, job: JobRecord) -> str:
        return "@you"

    async def post_status(self, job, text, actions) -> str:
        message_id = str(next(self._ids))
        self.posts.append((message_id, text))
        return message_id

    async def edit_status(self, job, message_id, text, actions) -> None:
        if message_id in self.gone:
            raise MessageGone(message_id)
        self.edits.append((message_id, text))

    async def send_video(self, job, video, caption, actions) -> str:
        if self.fail_videos:
            self.fail_videos -= 1
            raise ConnectionError("upload broke")
        self.videos.append(video)
        return str(next(self._ids))

    async def send_text(self, job, text, actions) -> str:
        self.texts.append(text)
        return str(next(self._ids))

    async def find_delivered(self, job) -> str | None:
        return self.already_posted


@pytest.fixture
async def service(tmp_path):
    service = await open_service(tmp_path, Settings())
    yield service
    await service.queue.db.dispose()


async def test_edits_are_throttled_per_message_and_only_sent_on_change(service: BotService) -> None:
    port = RecordingPort(EditPolicy(min_interval_private_s=3600, min_interval_group_s=3600))
    watcher = DeliveryWatcher(service, port)
    job_id = await submit(service)
    await service.attach_status_message(job_id, "7")
    engine = FakeEngine(service)
    await watcher.tick()
    assert [m for m, _ in port.edits] == ["7"]
    await watcher.tick()
    assert len(port.edits) == 1, "same text: no edit"
    job, token = await engine.claim()
    await engine.progress(job, token, "render", 0.5)
    await watcher.tick()
    assert len(port.edits) == 1, "changed, but within the interval: held back"
    await engine.complete(job, token, make_mp4(0.5))
    await watcher.tick()
    assert port.edits[-1][1].startswith("Done!"), "a job's last edit is never held back"
    assert len(port.videos) == 1


async def test_an_old_or_deleted_status_message_is_replaced_by_a_fresh_one(service: BotService) -> None:
    port = RecordingPort(EditPolicy(0.0, 0.0, fresh_message_after_s=3300))
    watcher = DeliveryWatcher(service, port)
    ended = await submit(service)
    await service.queue.cancel(ended, actor=OWNER.owner_key)
    await service.attach_status_message(ended, "deleted-too")
    failed = await submit(service)
    await service.attach_status_message(failed, "deleted-as-well")
    job, token = await FakeEngine(service).claim()
    await service.queue.fail(job.id, token, error_user="Broken.", error_admin="x", retryable=False)
    first, second = await submit(service), await submit(service)
    await service.attach_status_message(first, "old")
    await service.attach_status_message(second, "deleted")
    port.ages["old"] = 3600.0
    port.gone.update({"deleted", "deleted-too", "deleted-as-well"})
    await watcher.tick()
    assert not port.edits
    assert len(port.posts) == 3, "running jobs and the failure get new messages; the cancelled job does not"
    assert any("could not be made: Broken." in body for _, body in port.posts)
    ids = {(await service.queue.get(j)).status_message_id for j in (first, second, failed)}
    assert ids == {m for m, _ in port.posts}, "the job rows now point at the fresh messages"


async def test_a_redelivery_asks_the_platform_first_and_never_posts_twice(service: BotService) -> None:
    port = RecordingPort(EditPolicy(0.0, 0.0))
    watcher = DeliveryWatcher(service, port)
    job_id = await submit(service)
    engine = FakeEngine(service)
    job, token = await engine.claim()
    await engine.complete(job, token, make_mp4(0.5))
    crashed = await service.queue.claim_delivery("telegram", lease_s=0.0)  # a process that died mid-upload
    assert crashed is not None
    port.already_posted = "555"
    await watcher.tick()
    delivered = await service.queue.get(job_id)
    assert delivered.delivery_state == "delivered" and delivered.delivered_message_id == "555"
    assert delivered.delivery_attempts == 2
    assert port.videos == []


async def test_a_failing_upload_is_retried_then_the_user_is_told(service: BotService) -> None:
    port = RecordingPort(EditPolicy(0.0, 0.0))
    metrics = DeliveryMetrics()
    watcher = DeliveryWatcher(service, port, metrics=metrics, max_delivery_attempts=2)
    job_id = await submit(service)
    engine = FakeEngine(service)
    job, token = await engine.claim()
    await engine.complete(job, token, make_mp4(0.5))
    port.fail_videos = 5
    await watcher.tick()  # attempt 1 fails, is put back, attempt 2 fails for good
    row = await service.queue.get(job_id)
    assert (row.delivery_state, row.delivery_attempts, metrics.delivery_errors) == ("failed", 2, 2)
    assert "upload broke" in row.error_admin
    assert port.texts and job_id in port.texts[-1] and "could not be made" in port.texts[-1]


async def complete_large(service: BotService, *, fitted: bytes | None = None) -> tuple[str, bytes]:
    job_id = await submit(service)
    engine = FakeEngine(service)
    job, token = await engine.claim()
    large = make_mp4(2.0, noisy=True)
    await engine.complete(job, token, large, fitted=fitted, seconds=2.0)
    return job_id, large


async def test_over_the_limit_the_fitted_copy_is_sent(service: BotService) -> None:
    fitted = make_mp4(2.0)
    port = RecordingPort(EditPolicy(0.0, 0.0), limit=100_000)
    job_id, large = await complete_large(service, fitted=fitted)
    assert len(large) > 100_000 > len(fitted)
    await DeliveryWatcher(service, port).tick()
    assert port.videos[0].path.read_bytes() == fitted


async def test_over_the_limit_without_a_fitted_copy_it_is_re_encoded_to_fit(service: BotService) -> None:
    port = RecordingPort(EditPolicy(0.0, 0.0), limit=60_000)
    job_id, large = await complete_large(service)
    await DeliveryWatcher(service, port).tick()
    sent = port.videos[0]
    assert sent.size_bytes <= 60_000 < len(large)
    assert sent.path == service.media.path(job_id, "result_fitted")
    with av.open(io.BytesIO(sent.path.read_bytes())) as container:
        assert {s.type for s in container.streams} == {"video", "audio"}
        assert container.duration / 1e6 == pytest.approx(2.0, abs=0.2)


async def test_when_nothing_fits_the_user_gets_an_expiring_signed_link(service: BotService) -> None:
    port = RecordingPort(EditPolicy(0.0, 0.0), limit=2_000)
    job_id, large = await complete_large(service)
    signer = LinkSigner(b"s3cret", "http://duet.example", ttl_s=3600)
    await DeliveryWatcher(service, port, link_signer=signer).tick()
    message = port.texts[-1]
    assert "AI-generated" in message and "within 1 h" in message
    url = next(word for word in message.split() if word.startswith("http://duet.example/v/"))
    app = build_http_app(service.queue, service.media, DeliveryMetrics(), signer)
    async with TestClient(TestServer(app)) as client:
        response = await client.get(url.removeprefix("http://duet.example"))
        assert response.status == 200 and await response.read() == large
    assert (await service.queue.get(job_id)).delivery_state == "delivered"


async def test_without_a_link_secret_the_user_is_told_the_video_is_too_large(service: BotService) -> None:
    port = RecordingPort(EditPolicy(0.0, 0.0), limit=2_000)
    job_id, _ = await complete_large(service)
    await DeliveryWatcher(service, port, reencode=False).tick()
    assert "too large" in port.texts[-1] and job_id in port.texts[-1]


async def test_telegram_flood_limit_on_the_upload_is_waited_out(tmp_path, fake_telegram: FakeTelegram) -> None:
    service = await open_service(tmp_path, telegram_settings(fake_telegram))
    job_id = await submit(service, chat_id=str(fake_telegram.user.id))
    engine = FakeEngine(service)
    job, token = await engine.claim()
    await engine.complete(job, token, make_mp4(0.5))
    fake_telegram.rate_limit_next("sendVideo", retry_after_s=1)
    application = build_application(service, fake_telegram.token)
    async with running_telegram_app(application):
        await DeliveryWatcher(service, TelegramPort(application.bot, service.settings.telegram)).tick()
    limited, sent = fake_telegram.calls("sendVideo")
    assert (limited.status, sent.status) == (429, 200)
    assert sent.at_s - limited.at_s >= 1.0
    assert (await service.queue.get(job_id)).delivery_state == "delivered"
    await service.queue.db.dispose()


def test_edit_policies_follow_each_platforms_limits() -> None:
    settings = Settings()
    telegram, discord = EditPolicy.telegram(settings.telegram), EditPolicy.discord(settings.discord)
    assert (telegram.min_interval_s(False), telegram.min_interval_s(True), telegram.fresh_message_after_s) == (1.0, 3.0, None)
    assert discord.min_interval_s(False) == discord.min_interval_s(True) == 5.0
    assert discord.fresh_message_after_s is not None and discord.fresh_message_after_s < 3600


async def test_telegram_status_in_a_group_waits_and_a_deleted_one_is_posted_again(
    tmp_path, fake_telegram: FakeTelegram
) -> None:
    service = await open_service(tmp_path, telegram_settings(fake_telegram, edit_interval_private_s=0.5))
    user_id = str(fake_telegram.user.id)
    group = fake_telegram.add_group("Duet fans")
    in_group = await queue_sample_job(service, Requester(platform="telegram", user_id=user_id, chat_id=str(group["id"])))
    in_private = await queue_sample_job(service, Requester(platform="telegram", user_id=user_id, chat_id=user_id))
    engine = FakeEngine(service)
    application = build_application(service, fake_telegram.token)
    async with running_telegram_app(application):
        port = TelegramPort(application.bot, service.settings.telegram)
        watcher = DeliveryWatcher(service, port)
        for job_id in (in_group, in_private):
            job = await service.queue.get(job_id)
            await service.attach_status_message(job_id, await port.post_status(job, "Queued", ()))
        group_job, group_token = await engine.claim()
        assert group_job.id == in_group and port.is_group_chat(group_job)
        await engine.progress(group_job, group_token, "render", 0.1)
        await watcher.tick()
        await engine.progress(group_job, group_token, "render", 0.5)
        await watcher.tick()  # within 3 s of the last edit in a group: held back
        group_edits = fake_telegram.calls(lambda c: c.route == "editMessageText" and c.params["chat_id"] == group["id"])
        assert len(group_edits) == 1 and "20%" in group_edits[0].params["text"]

        old_message = (await service.queue.get(in_private)).status_message_id
        await application.bot.delete_message(int(user_id), int(old_message))  # the user deleted it
        private_job, private_token = await engine.claim()
        await engine.progress(private_job, private_token, "tts", 0.5)
        await asyncio.sleep(0.5)
        await watcher.tick()
        reposted = await fake_telegram.wait_for_call(
            lambda c: c.route == "sendMessage" and "speaking the lines" in str(c.params.get("text"))
        )
    assert reposted.params["chat_id"] == int(user_id)
    assert (await service.queue.get(in_private)).status_message_id not in (None, old_message)
    await service.queue.db.dispose()
