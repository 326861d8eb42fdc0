"""Scaffolding shared by the chat front-end tests: services on a fresh database, a small real MP4, a
fake engine that claims and completes jobs the way the real one does (through `JobQueue` only), and the
two sample photos."""

from __future__ import annotations

import dataclasses
import functools
import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

import bot
from bot.core.drafts import DraftStore
from bot.core.service import BotService
from bot.core.submit import Draft, Prepared, enqueue, prepare
from storage.contract import JobResult, Requester
from storage.db import Database
from storage.media import MediaStore
from storage.migrate import upgrade
from storage.queue import JobQueue, JobRecord
from storage.settings import Settings

SAMPLES = Path(bot.__file__).parent / "samples"
PHOTO_A = (SAMPLES / "grace_hopper.jpg").read_bytes()
PHOTO_B = (SAMPLES / "astronaut.png").read_bytes()
SCRIPT = (SAMPLES / "script.txt").read_text(encoding="utf-8")


def make_mp4(seconds: float = 1.0, *, size: int = 96, fps: int = 10, noisy: bool = False) -> bytes:
    """A real H.264 + AAC MP4; `noisy` frames are incompressible, so the file is large for its length."""
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    with av.open(buffer, "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        if noisy:
            video.options = {"crf": "0", "preset": "ultrafast"}
        audio = out.add_stream("aac", rate=24_000)
        frames = int(seconds * fps)
        for index in range(frames):
            if noisy:
                pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            else:
                pixels = np.full((size, size, 3), index * 7 % 255, np.uint8)
            out.mux(video.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        out.mux(video.encode(None))
        samples = int(seconds * 24_000)
        tone = (0.2 * np.sin(np.arange(samples) * 2 * np.pi * 440 / 24_000)).astype(np.float32)
        for start in range(0, samples, 1024):
            chunk = tone[start : start + 1024]
            if len(chunk) < 1024:
                break
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
            frame.sample_rate = 24_000
            frame.pts = start
            frame.time_base = Fraction(1, 24_000)
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
    return buffer.getvalue()


@functools.cache
def _sample_prepared() -> Prepared:
    requester = Requester(platform="telegram", user_id="1", chat_id="1")
    return prepare(Draft(requester=requester, photo_a=PHOTO_A, photo_b=PHOTO_B, script=SCRIPT), Settings())


async def queue_sample_job(service: BotService, requester: Requester) -> str:
    """A queued job from the sample photos and script, composed once per test session: for tests about
    what happens to jobs, not about how a request becomes one."""
    prepared = _sample_prepared()
    prepared = dataclasses.replace(prepared, draft=dataclasses.replace(prepared.draft, requester=requester))
    return (await enqueue(prepared, service.queue, service.media)).job_id


async def open_service(tmp_path: Path, settings: Settings | None = None, db_url: str | None = None) -> BotService:
    settings = settings or Settings()
    db = Database(db_url or f"sqlite+aiosqlite:///{tmp_path / 'duet.db'}")
    await upgrade(db)
    queue = JobQueue(db, settings.queue)
    media = MediaStore(tmp_path / "media", db)
    return BotService(settings, queue, media, DraftStore.beside_media(tmp_path / "media"))


class FakeEngine:
    """Claims jobs and finishes them through the queue's verbs, as engine/serve does."""

    def __init__(self, service: BotService, worker: str = "fake-engine") -> None:
        self.queue = service.queue
        self.media = service.media
        self.worker = worker

    async def claim(self) -> tuple[JobRecord, str]:
        job = await self.queue.claim(self.worker)
        assert job is not None, "nothing to claim"
        assert job.lease_token is not None
        return job, job.lease_token

    async def progress(self, job: JobRecord, token: str, stage: str, progress: float, detail: str | None = None) -> bool:
        return await self.queue.progress(job.id, token, stage, progress, detail)

    async def complete(
        self, job: JobRecord, token: str, mp4: bytes, *, fitted: bytes | None = None, seconds: float = 1.0
    ) -> None:
        video = await self.media.put(job.id, "result", mp4)
        fitted_ref = await self.media.put(job.id, "result_fitted", fitted) if fitted is not None else None
        result = JobResult(video=video, fitted_video=fitted_ref, duration_s=seconds, width=96, height=96)
        await self.queue.complete(job.id, token, result)


# ---- a user in a Telegram chat with the Duet bot ----------------------------------------------------


def telegram_settings(fake, **telegram: object) -> Settings:
    """Default settings with the Telegram API pointed at `fake` (plus any `[telegram]` overrides)."""
    from storage.settings import TelegramSettings

    section = TelegramSettings(api_base_url=fake.api_base_url, file_base_url=fake.file_base_url, **telegram)
    return Settings(telegram=section)


def sent_text(call) -> str:
    return str(call.params.get("text") or call.params.get("caption") or "")


class TelegramChat:
    """Plays one user talking to the bot through the fake Telegram server, and waits for answers."""

    def __init__(self, fake, user=None) -> None:
        self.fake = fake
        self.user = user or fake.user
        self._answered: set[int] = set()

    async def bot_says(self, needle: str, *, route: str | None = None, timeout: float = 10.0):
        """The first bot call (sendMessage/sendPhoto/edit…) to this user's chat whose text contains
        `needle` and that no earlier `bot_says` returned: a conversation read in order."""

        def matches(call) -> bool:
            return (
                id(call) not in self._answered
                and call.status == 200
                and (route is None or call.route == route)
                and call.params.get("chat_id") == self.user.id
                and needle in sent_text(call)
            )

        call = await self.fake.wait_for_call(matches, timeout=timeout)
        self._answered.add(id(call))
        return call

    def message(self, call) -> dict:
        """The bot's message as stored now (edits applied) for a recorded send call."""
        chat_id = call.params["chat_id"]
        for message in reversed(self.fake.sent_messages(chat_id)):
            if message.get("text") == call.params.get("text") or message.get("caption") == call.params.get("caption"):
                return message
        raise LookupError("no such bot message")

    def press(self, message: dict, prefix: str, *, user=None) -> str:
        """Press the button whose callback data starts with `prefix`; returns the full callback data."""
        current = self.fake.messages[(message["chat"]["id"], message["message_id"])]
        rows = current.get("reply_markup", {}).get("inline_keyboard", [])
        data = next(b["callback_data"] for row in rows for b in row if b.get("callback_data", "").startswith(prefix))
        self.fake.press_button(current, data, user=user or self.user)
        return data
