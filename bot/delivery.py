"""The delivery watcher: keeps each job's status message current and posts finished videos back, once.

One `DeliveryWatcher` per platform runs in the bot process. Every tick it
1. edits the status messages of the platform's active jobs (and of jobs that ended a moment ago) when
   their text changed, no more often than the platform's `EditPolicy` allows per message, and posts a
   fresh status message when the old one cannot be edited any more (`MessageGone`, or older than
   `fresh_message_after_s`: Discord refuses edits of old messages with 30046);
2. claims succeeded jobs for delivery (`JobQueue.claim_delivery`), posts the MP4 as a reply with a
   mention, a Re-roll button and the AI-generated label, and marks it delivered with the message id.

The platform side is a `PlatformPort` that each adapter implements (Telegram: bot/telegram/port.py).
Everything the watcher knows is in the database, so a restarted bot resumes editing the same messages.

Exactly once: delivery is claimed under a token; the message id is recorded right after posting. A
crash between posting and recording leaves the claim to expire, and the next claim has
`delivery_attempts > 1`: the watcher then asks `port.find_delivered(job)` first. Discord can answer
(messages carry the job id as nonce and can be listed); **Telegram cannot** — the Bot API has no way to
read a chat's history — so on Telegram a crash inside that window (seconds, during the upload) can
produce one duplicate video, never a lost one.

Too large for the platform: the engine's fitted copy if it fits, else a copy re-encoded here with the
engine's own `engine.stages.mux.fit_to_bytes` (PyAV only, no torch), else an expiring signed link
(`bot.http.LinkSigner`), else a message naming the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bot.core.actions import Action, Verb
from bot.core.service import BotService
from bot.core.status import status_actions, status_text
from bot.core.texts import size_text, text
from engine.stages.mux import FitError, fit_to_bytes
from storage.contract import ACTIVE_STATES, TERMINAL_STATES, JobResult, JobState
from storage.errors import LeaseLost
from storage.queue import JobRecord

log = logging.getLogger(__name__)

_ACTIVE = [state.value for state in ACTIVE_STATES]
_TERMINAL = [state.value for state in TERMINAL_STATES]
_FAILED = (JobState.FAILED.value, JobState.DEAD.value)


@dataclass(frozen=True)
class EditPolicy:
    """How often one status message may be edited, per platform (data the adapters share).

    Telegram: about one edit per second per private chat, 20 messages a minute in a group (so ≥ 3 s).
    Discord: a message edit bucket is shared by the channel, ≥ 5 s keeps clear of it; edits of a
    message older than an hour are refused (30046), so a fresh status message is posted instead.
    """

    min_interval_private_s: float
    min_interval_group_s: float
    fresh_message_after_s: float | None = None

    def min_interval_s(self, is_group: bool) -> float:
        return self.min_interval_group_s if is_group else self.min_interval_private_s

    @classmethod
    def telegram(cls, settings) -> EditPolicy:
        return cls(settings.edit_interval_private_s, settings.edit_interval_group_s)

    @classmethod
    def discord(cls, settings) -> EditPolicy:
        return cls(settings.edit_interval_s, settings.edit_interval_s, fresh_message_after_s=3300.0)


@dataclass(frozen=True)
class VideoFile:
    path: Path
    size_bytes: int
    width: int
    height: int
    duration_s: float
    filename: str = "duet.mp4"


class MessageGone(Exception):
    """The status message cannot be edited any more (deleted, too old): post a new one."""


class PlatformPort(Protocol):
    """What the watcher needs from a chat platform. Message ids are strings; texts are plain."""

    platform: str
    policy: EditPolicy

    def upload_limit_bytes(self, job: JobRecord) -> int: ...

    def is_group_chat(self, job: JobRecord) -> bool: ...

    def message_age_s(self, message_id: str) -> float | None:
        """Seconds since the message was posted, when the id tells (Discord snowflakes), else None."""
        ...

    async def post_status(self, job: JobRecord, text: str, actions: tuple[Action, ...]) -> str: ...

    async def edit_status(self, job: JobRecord, message_id: str, text: str, actions: tuple[Action, ...]) -> None:
        """Raise MessageGone when the message cannot be edited; ignore "not modified"."""
        ...

    async def send_video(self, job: JobRecord, video: VideoFile, caption: str, actions: tuple[Action, ...]) -> str:
        """Post the video as a reply to the request, mentioning the user; returns the message id."""
        ...

    async def send_text(self, job: JobRecord, text: str, actions: tuple[Action, ...]) -> str: ...

    async def find_delivered(self, job: JobRecord) -> str | None:
        """The message id of an earlier post of this job's video, if the platform can tell."""
        ...

    def mention(self, job: JobRecord) -> str: ...


@dataclass
class DeliveryMetrics:
    """Counters for /metrics, kept by the watchers of this process."""

    delivered: int = 0
    delivery_errors: int = 0
    edit_errors: int = 0
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=500))  # finished → posted

    def latency_quantiles(self) -> dict[str, float]:
        values = sorted(self.latencies_s)
        if not values:
            return {}
        if len(values) == 1:
            return {"0.5": values[0], "0.95": values[0]}
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        return {"0.5": cuts[49], "0.95": cuts[94]}


@dataclass
class _Shown:
    text: str
    at: float  # monotonic time of the last edit


class DeliveryWatcher:
    def __init__(
        self,
        service: BotService,
        port: PlatformPort,
        *,
        reencode: bool = True,
        link_signer=None,
        metrics: DeliveryMetrics | None = None,
        poll_interval_s: float | None = None,
        max_delivery_attempts: int = 5,
        resume_window_s: float = 3600.0,
    ) -> None:
        self.service = service
        self.queue = service.queue
        self.port = port
        self.reencode = reencode  # re-encode a result too large for the platform (CPU, in a thread)
        self.link_signer = link_signer  # bot.http.LinkSigner, or None when no DUET_LINK_SECRET is set
        self.metrics = metrics or DeliveryMetrics()
        self.poll_interval_s = poll_interval_s or service.settings.queue.poll_interval_s
        self.max_delivery_attempts = max_delivery_attempts
        self.resume_window_s = resume_window_s
        self._shown: dict[str, _Shown] = {}
        self._finished: set[str] = set()  # terminal jobs whose final status is on screen
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Tick until `stop()`; a failing tick is logged and the loop goes on.

        Stopping is a flag checked between ticks rather than a task cancellation, because a tick may be
        inside a library (database driver, HTTP client) that does not pass a cancellation on; a stop
        therefore lets the current post finish and be recorded, which is what exactly-once wants.
        """
        while not self._stopping.is_set():
            try:
                await self.tick()
            except Exception:
                log.exception("delivery tick failed", extra={"action": "delivery_tick", "platform": self.port.platform})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.poll_interval_s)

    def stop(self) -> None:
        self._stopping.set()

    async def tick(self) -> None:
        await self.refresh_statuses()
        while (claimed := await self.queue.claim_delivery(self.port.platform)) is not None:
            await self.deliver(*claimed)

    # ---- status messages -------------------------------------------------------------------------------

    async def refresh_statuses(self) -> None:
        platform = self.port.platform
        jobs = await self.queue.list_jobs(platform=platform, states=_ACTIVE, limit=200)
        since = self.queue.clock() - self.resume_window_s
        ended = await self.queue.list_jobs(platform=platform, states=_TERMINAL, limit=50)
        self._finished &= {job.id for job in ended}  # older ones never come back into this window
        jobs += [job for job in ended if job.id not in self._finished and (job.finished_at or 0) >= since]
        for job in jobs:
            try:
                await self._refresh(job)
            except Exception:
                self.metrics.edit_errors += 1
                log.exception("status update failed", extra={"action": "status_edit", "job_id": job.id})

    async def _refresh(self, job: JobRecord) -> None:
        if job.status_message_id is None and job.state not in _TERMINAL:
            return  # the adapter posts it right after submitting; nothing to edit yet
        locale = job.spec.requester.locale
        status = await self.service.status(job)
        body, actions = status_text(status, locale), status_actions(status)
        shown = self._shown.get(job.id)
        now = time.monotonic()
        is_final = JobState(job.state).is_terminal
        if shown is not None and shown.text == body:
            if is_final:
                self._finished.add(job.id)
            return
        interval = self.port.policy.min_interval_s(self.port.is_group_chat(job))
        if shown is not None and not is_final and now - shown.at < interval:
            return  # throttled: a later tick shows the newest text (a job's last edit is never held back)
        message_id = job.status_message_id
        age = self.port.message_age_s(message_id) if message_id else None
        fresh_after = self.port.policy.fresh_message_after_s
        needs_new = fresh_after is not None and age is not None and age > fresh_after
        if message_id is not None and not needs_new:
            try:
                await self.port.edit_status(job, message_id, body, actions)
            except MessageGone:
                needs_new = True
        if message_id is None or needs_new:
            # A new message while the job runs; once it ended, only a failure is worth a new message
            # (the video is its own message, and a cancel was the user's doing).
            if not is_final or job.state in _FAILED:
                await self._post_fresh(job, body, actions)
        self._shown[job.id] = _Shown(body, now)
        if is_final:
            self._finished.add(job.id)
            self._shown.pop(job.id, None)

    async def _post_fresh(self, job: JobRecord, body: str, actions: tuple[Action, ...]) -> None:
        message_id = await self.port.post_status(job, body, actions)
        await self.service.attach_status_message(job.id, message_id)

    # ---- delivery ------------------------------------------------------------------------------------

    async def deliver(self, job: JobRecord, token: str) -> None:
        """Post one claimed job's video (or link) and record it; a failure is retried a few times."""
        try:
            message_id = None
            if job.delivery_attempts > 1:
                message_id = await self.port.find_delivered(job)
            if message_id is None:
                message_id = await self._post_result(job)
            await self.queue.mark_delivered(job.id, token, message_id)
        except LeaseLost:
            log.warning("delivery claim lost", extra={"action": "deliver", "job_id": job.id})
            return
        except Exception as exc:
            self.metrics.delivery_errors += 1
            retry = job.delivery_attempts < self.max_delivery_attempts
            log.warning(
                "delivery of job %s failed (attempt %d, retry: %s): %r",
                job.id,
                job.delivery_attempts,
                retry,
                exc,
                extra={"action": "deliver", "job_id": job.id},
            )
            await self.queue.mark_delivery_failed(job.id, token, error_admin=f"delivery: {exc!r}"[:500], retry=retry)
            if not retry:
                await self._tell_failure(job)
            return
        self.metrics.delivered += 1
        if job.finished_at is not None:
            self.metrics.latencies_s.append(max(0.0, self.queue.clock() - job.finished_at))

    async def _post_result(self, job: JobRecord) -> str:
        result = job.result
        assert result is not None, "claim_delivery only returns succeeded jobs"
        locale = job.spec.requester.locale
        mention = self.port.mention(job)
        reroll = (Action(Verb.REROLL, job.id),)
        video = await self._fitting_video(job, result)
        if video is not None:
            return await self.port.send_video(job, video, text("result.caption", locale, mention=mention), reroll)
        size = size_text(result.video.size_bytes)
        if self.link_signer is not None:
            url = self.link_signer.url(job.id, "result")
            hours = max(1, round(self.link_signer.ttl_s / 3600))
            body = text("result.link", locale, mention=mention, size=size, hours=hours, url=url)
            return await self.port.send_text(job, body, reroll)
        body = text("result.too_large", locale, mention=mention, size=size, job_id=job.id)
        return await self.port.send_text(job, body, ())

    async def _fitting_video(self, job: JobRecord, result: JobResult) -> VideoFile | None:
        """The result if it fits the upload limit, else the fitted copy, else a re-encoded one, else None."""
        limit = self.port.upload_limit_bytes(job)
        media = self.service.media
        for ref in (result.video, result.fitted_video):
            if ref is not None and ref.size_bytes <= limit:
                return self._video_file(media.path(job.id, ref.role), ref.size_bytes, result)
        if not self.reencode:
            return None
        source = media.path(job.id, "result")
        scratch = source.with_name(f".fit-{uuid.uuid4().hex}.mp4")
        try:
            await asyncio.to_thread(fit_to_bytes, source, limit, scratch)
            ref = await media.adopt(job.id, "result_fitted", scratch)
        except FitError as error:
            log.info("no fitting copy: %s", error.admin_detail, extra={"action": "fit", "job_id": job.id})
            return None
        finally:
            scratch.unlink(missing_ok=True)  # adopted files have moved; this only removes a failed attempt
        return self._video_file(media.path(job.id, "result_fitted"), ref.size_bytes, result)

    @staticmethod
    def _video_file(path: Path, size: int, result: JobResult) -> VideoFile:
        return VideoFile(path, size, result.width, result.height, result.duration_s)

    async def _tell_failure(self, job: JobRecord) -> None:
        locale = job.spec.requester.locale
        body = text("status.failed", locale, reason=text("status.failed_reason", locale), job_id=job.id)
        try:
            await self.port.send_text(job, body, ())
        except Exception:
            log.exception("could not tell the user about a failed delivery", extra={"job_id": job.id})
