"""Rank 0's conversation with the queue, running beside the render on its own thread and event loop.

The render holds the main thread for seconds to minutes per step, so everything that must keep happening while it
runs lives here, as named asyncio tasks on a private loop: the lease heartbeat (an expired lease hands the job to
another worker), progress writes, the workers-table heartbeat (which also brings drain requests), the reaper, and
the SIGTERM watcher that stops the job at the next step boundary and, when no supervisor does it (a bare
torchrun), requeues it at once, so that the requeue lands inside torchrun's 30 s grace however long a step takes.

The main thread asks questions (`claim`, `stop_code`) and reports (`report`); flags go the other way as plain
attributes. No other rank and no other module of the engine talks to the database.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, TypeVar

from storage import admin
from storage.cli import Services, open_services
from storage.contract import JobResult, JobState
from storage.errors import JobNotFound, LeaseLost, MediaError
from storage.queue import JobRecord
from storage.settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")

# How often the SIGTERM flag is looked at: a signal handler may only set a flag, never touch the loop.
_SIGNAL_POLL_S = 0.1


class StopCode(IntEnum):
    """Why every rank stops the current job at the next step boundary (sent as an int over gloo)."""

    GO_ON = 0
    CANCELLED = 1  # the owner or an operator cancelled it
    LEASE_LOST = 2  # reaped, finished or cancelled elsewhere: nothing more may be written
    SHUTDOWN = 3  # SIGTERM: already requeued without charging the attempt
    TIME_LIMIT = 4  # ran past the per-job limit


@dataclass
class ActiveJob:
    record: JobRecord
    started: float  # time.monotonic()
    stop: StopCode = StopCode.GO_ON
    stages_seen: set[str] = field(default_factory=set)
    latest: tuple[str, float, str | None] | None = None  # (stage, progress 0..1, detail) not yet written
    wake_writer: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task] = field(default_factory=list)

    @property
    def job_id(self) -> str:
        return self.record.id

    @property
    def token(self) -> str:
        return self.record.lease_token or ""


class Leader:
    def __init__(
        self, settings: Settings, worker_id: str, *, time_limit_s: float, requeue_on_signal: bool, info: dict[str, Any],
        job_id: str | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        # An engine started for one job (`duet render`) claims that job only, never one queued ahead of it.
        self.job_id = job_id
        # Under engine/supervisor.py the supervisor requeues on an operator's SIGTERM; the SIGTERM rank 0 sees may
        # then also be torchrun tearing the group down after a crash, which must not be requeued uncharged.
        self.requeue_on_signal = requeue_on_signal
        self.worker_id = worker_id
        self.time_limit_s = time_limit_s
        self.info = info
        self.drain_requested = False
        self.shutting_down = False
        self._signal: int | None = None
        self._active: ActiveJob | None = None
        self._wake_main = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="duet-leader", daemon=True)
        self._services: Services | None = None
        self._tasks: list[asyncio.Task] = []

    # ---- life cycle (main thread) --------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self._call(self._start())

    def close(self) -> None:
        try:
            self._call(self._close(), timeout_s=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def request_shutdown(self, signum: int) -> None:
        """From a signal handler: only a flag; the watcher task does the work on the loop."""
        self._signal = signum

    @property
    def should_stop(self) -> bool:
        # `_signal` too, not only the watcher's flag: the handler runs on the main thread before its next claim.
        return self._signal is not None or self.shutting_down or self.drain_requested

    def wait_idle(self, seconds: float) -> None:
        """Sleep between polls of an empty queue; a signal or a drain request ends the nap early."""
        self._wake_main.wait(seconds)
        self._wake_main.clear()

    # ---- one job (main thread) ------------------------------------------------------------------------

    def claim(self) -> JobRecord | None:
        if self.should_stop:
            return None
        record = self._call(self._queue.claim(self.worker_id, job_id=self.job_id))
        if record is not None:
            self._call(self._begin(record))
        return record

    def why_job_is_out_of_reach(self) -> str | None:
        """For an engine started for one job: why that job can no longer become ours (it ended, another worker
        holds it, it is gone), or None while it may still be claimed: queued (backing off, or claims paused), or
        still leased to this worker's name by a group that crashed (its lease runs out and our reaper requeues it)."""
        try:
            record = self._call(self._queue.get(self.job_id))
        except JobNotFound:
            return "not in the queue"
        if record.state == JobState.QUEUED:
            return None
        if record.state == JobState.RUNNING:
            return None if record.lease_owner == self.worker_id else f"taken by worker {record.lease_owner}"
        return f"{record.state} already"

    def report(self, stage: str, done: int, total: int) -> None:
        """Progress from the render (every step); written by the progress task, coalesced, never blocking."""
        job = self._active
        if job is None:
            return
        detail = f"{done}/{total}" if total > 1 else None
        job.latest = (str(stage), done / total if total else 0.0, detail)
        self._loop.call_soon_threadsafe(job.wake_writer.set)

    def frame_path(self, record: JobRecord) -> str:
        """The job's composed frame, checked against the digest the submission recorded (MediaError if not)."""
        frame = record.spec.inputs.frame
        if frame is None:
            raise MediaError("This job has no composed frame.", f"job {record.id}: spec without inputs.frame")
        self._call(self._services.media.read(frame, record.id))
        return str(self._services.media.path(record.id, "frame"))

    def stop_code(self) -> StopCode:
        """Why the current job should stop now (GO_ON: it should not); asked at every step boundary."""
        job = self._active
        if job is None:
            return StopCode.GO_ON
        if job.stop == StopCode.GO_ON and time.monotonic() - job.started > self.time_limit_s:
            job.stop = StopCode.TIME_LIMIT
        return job.stop

    def settle(self, coroutine_factory) -> None:
        """Run the job's final write (complete / fail / cancel) on the loop, then forget the job.

        `coroutine_factory(queue, media, job)` returns the coroutine; a LeaseLost there means someone else
        already decided the job's fate (reaper, requeue on SIGTERM), which is logged, not raised.
        """
        job = self._active
        try:
            self._call(self._settle(job, coroutine_factory))
        finally:
            self._call(self._end(job))

    # ---- loop side ---------------------------------------------------------------------------------------

    @property
    def _queue(self):
        return self._services.queue

    def _call(self, coroutine: Coroutine[Any, Any, T], timeout_s: float | None = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    async def _start(self) -> None:
        self._services = await open_services(self.settings)
        await admin.register_worker(
            self._queue, self.worker_id, host=self.info.get("host", ""), pid=self.info.get("pid", 0),
            world_size=self.info.get("world_size", 1), info=self.info,
        )  # fmt: skip
        queue = self.settings.queue
        self._tasks = [
            asyncio.create_task(self._every(queue.heartbeat_s, self._worker_heartbeat), name="worker_heartbeat"),
            asyncio.create_task(self._every(queue.reaper_interval_s, self._reap), name="reaper"),
            asyncio.create_task(self._every(_SIGNAL_POLL_S, self._watch_signal), name="signal_watch"),
        ]

    async def _close(self) -> None:
        # A job still active here was left by a failing group: its lease simply runs out (the reaper charges it).
        tasks = self._tasks + (self._active.tasks if self._active is not None else [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._services is not None:
            try:
                await admin.worker_heartbeat(self._queue, self.worker_id, state="stopped", current_job_id=None)
            finally:
                await self._services.queue.db.dispose()

    async def _every(self, interval_s: float, action) -> None:
        """Run `action` every `interval_s`; a failing round is logged and the next one tried (a DB blip must not
        stop the heartbeat for good)."""
        while True:
            try:
                await action()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("background task failed", extra={"action": action.__name__})
            await asyncio.sleep(interval_s)

    async def _worker_heartbeat(self) -> None:
        job = self._active
        state = "busy" if job else ("draining" if self.drain_requested else "idle")
        drain = await admin.worker_heartbeat(
            self._queue, self.worker_id, state=state, current_job_id=job.job_id if job else None
        )
        if drain and not self.drain_requested:
            logger.info("drain requested: finishing the current job, then stopping", extra={"action": "drain"})
            self.drain_requested = True
            self._wake_main.set()

    async def _reap(self) -> None:
        for job_id, state in await self._queue.reap():
            logger.warning("reaped job %s -> %s", job_id, state, extra={"action": "reap", "job_id": job_id})

    async def _watch_signal(self) -> None:
        if self._signal is None or self.shutting_down:
            return
        self.shutting_down = True
        self._wake_main.set()
        job = self._active
        logger.warning("signal %s: stopping", self._signal, extra={"action": "shutdown"})
        if job is not None and job.stop in (StopCode.GO_ON, StopCode.CANCELLED, StopCode.TIME_LIMIT):
            job.stop = StopCode.SHUTDOWN
            if not self.requeue_on_signal:
                return
            try:
                await self._queue.requeue(job.job_id, job.token, reason=f"signal {self._signal}")
                logger.info("job %s requeued on shutdown", job.job_id, extra={"action": "requeue"})
            except LeaseLost:
                logger.info("job already gone at shutdown", extra={"action": "requeue", "job_id": job.job_id})

    async def _begin(self, record: JobRecord) -> None:
        job = ActiveJob(record=record, started=time.monotonic())
        self._active = job
        job.tasks = [
            asyncio.create_task(self._every(self.settings.queue.heartbeat_s, self._lease_heartbeat), name="lease"),
            asyncio.create_task(self._write_progress(job), name="progress"),
        ]
        await admin.worker_heartbeat(self._queue, self.worker_id, state="busy", current_job_id=record.id)

    async def _lease_heartbeat(self) -> None:
        job = self._active
        if job is None or job.stop in (StopCode.LEASE_LOST, StopCode.SHUTDOWN):
            return
        await self._fenced(job, self._queue.heartbeat(job.job_id, job.token))

    async def _write_progress(self, job: ActiveJob) -> None:
        while True:
            await job.wake_writer.wait()
            job.wake_writer.clear()
            if job.latest is None or job.stop in (StopCode.LEASE_LOST, StopCode.SHUTDOWN):
                continue
            stage, progress, detail = job.latest
            job.latest = None
            # A stage's first entry goes into the job's history; chunked renders return to encode/render/decode
            # once per chunk, which only moves the progress.
            is_new = stage not in job.stages_seen
            if is_new:
                job.stages_seen.add(stage)
                await self._fenced(job, self._queue.set_stage(job.job_id, job.token, stage))
            if not is_new or progress > 0 or detail is not None:
                await self._fenced(job, self._queue.progress(job.job_id, job.token, stage, progress, detail))

    async def _fenced(self, job: ActiveJob, write: Coroutine[Any, Any, bool]) -> None:
        """A lease-extending write; its answer is the cancel flag. LeaseLost stops the job on every rank."""
        try:
            cancel_requested = await write
        except LeaseLost:
            if job.stop != StopCode.SHUTDOWN:
                logger.warning("lease of job %s lost: stopping it", job.job_id, extra={"action": "lease"})
                job.stop = StopCode.LEASE_LOST
            return
        if cancel_requested and job.stop == StopCode.GO_ON:
            logger.info("job %s: cancel requested", job.job_id, extra={"action": "cancel", "job_id": job.job_id})
            job.stop = StopCode.CANCELLED

    async def _settle(self, job: ActiveJob, coroutine_factory) -> None:
        try:
            await coroutine_factory(self._services.queue, self._services.media, job)
        except LeaseLost:
            logger.warning("the job's fate was decided elsewhere", extra={"action": "settle", "job_id": job.job_id})

    async def _end(self, job: ActiveJob) -> None:
        for task in job.tasks:
            task.cancel()
        await asyncio.gather(*job.tasks, return_exceptions=True)
        self._active = None
        state = "draining" if self.drain_requested else "idle"
        await admin.worker_heartbeat(self._queue, self.worker_id, state=state, current_job_id=None)


async def store_result(queue, media, job: ActiveJob, *, video: Path, fitted: Path | None, duration_s: float,
                       width: int, height: int, timings) -> None:  # fmt: skip
    """The MP4 (and its fitted copy) into the job's media directory, then the result row, fenced by the lease."""
    video_ref = await media.adopt(job.job_id, "result", video)
    fitted_ref = None if fitted is None else await media.adopt(job.job_id, "result_fitted", fitted)
    result = JobResult(video=video_ref, fitted_video=fitted_ref, duration_s=duration_s, width=width, height=height,
                       timings=tuple(timings))  # fmt: skip
    await queue.complete(job.job_id, job.token, result)

