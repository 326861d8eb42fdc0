"""A job's status as people read it: progress bar, stage, queue position and ETA, in en and zh.

`load_status` turns a `JobRecord` into a `JobStatus` (one extra read for the queue position);
`status_text` and `status_actions` render it. The ETA comes from measured throughput
(`measure_throughput`): the median render seconds per second of finished video over recent jobs,
falling back to the median job time from `storage.admin.stats`; with no finished job yet there is no
ETA rather than a made-up one. Both adapters and the delivery watcher use these functions; nothing here
knows a platform.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from bot.core.actions import Action, Verb
from bot.core.errors import normalize_locale
from bot.core.texts import duration_text, text
from bot.core.voices import SpeechRates
from storage import admin
from storage.contract import JobState, Stage
from storage.queue import JobQueue, JobRecord

# Share of a job's time each stage takes (render dominates); the bar fills by stage, then within it.
STAGE_WEIGHTS: dict[str, float] = {
    Stage.TTS: 0.04,
    Stage.AUDIO: 0.04,
    Stage.ENCODE: 0.04,
    Stage.RENDER: 0.80,
    Stage.DECODE: 0.05,
    Stage.MUX: 0.03,
}
_STAGE_ORDER = list(STAGE_WEIGHTS)
BAR_WIDTH = 12


@dataclass(frozen=True)
class Throughput:
    """How fast the engines have been. None fields mean "not measured yet"."""

    render_s_per_video_s: float | None = None  # median (finished - started) / video duration
    job_p50_s: float | None = None  # median job time, whatever its length
    queued_jobs: int = 0  # waiting now, for a new request's ETA
    measured_at: float = 0.0

    def job_seconds(self, video_s: float) -> float | None:
        """Expected engine time for a video of `video_s` seconds."""
        if self.render_s_per_video_s is not None and video_s > 0:
            return self.render_s_per_video_s * video_s
        return self.job_p50_s


async def measure_throughput(queue: JobQueue, *, recent: int = 50) -> Throughput:
    """Throughput over the last `recent` succeeded jobs (and the day's stats for a fallback)."""
    stats = await admin.stats(queue)
    ratios = []
    for job in await queue.list_jobs(states=[JobState.SUCCEEDED.value], limit=recent):
        result = job.result
        if result and result.duration_s > 0 and job.started_at and job.finished_at:
            ratios.append((job.finished_at - job.started_at) / result.duration_s)
    return Throughput(
        render_s_per_video_s=statistics.median(ratios) if ratios else None,
        job_p50_s=stats.render_time.p50_s,
        queued_jobs=stats.counts.get(JobState.QUEUED.value, 0),
        measured_at=time.time(),
    )


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    state: JobState
    stage: str | None
    progress: float  # 0..1 within the stage
    detail: str | None  # e.g. "12/40" while rendering
    position: int | None  # 1-based place in the queue while queued
    eta_s: float | None  # seconds until the video should be ready
    cancel_requested: bool
    attempts: int
    error_user: str | None

    @property
    def is_active(self) -> bool:
        return not self.state.is_terminal

    @property
    def overall_progress(self) -> float:
        """0..1 over the whole job: finished stages' weights plus the current stage's share."""
        if self.state == JobState.SUCCEEDED:
            return 1.0
        if self.state != JobState.RUNNING or self.stage not in STAGE_WEIGHTS:
            return 0.0
        index = _STAGE_ORDER.index(self.stage)
        done = sum(STAGE_WEIGHTS[s] for s in _STAGE_ORDER[:index])
        return min(1.0, done + STAGE_WEIGHTS[self.stage] * max(0.0, min(1.0, self.progress)))


def estimate_eta(job: JobRecord, position: int | None, throughput: Throughput) -> float | None:
    """Seconds until `job` should be done: the jobs ahead (one engine at a time) plus what is left of it.

    With several engines the real wait is shorter; the estimate is meant as an upper guide.
    """
    state = JobState(job.state)
    if state.is_terminal:
        return None
    own = throughput.job_seconds(video_seconds(job))
    if own is None:
        return None
    if state == JobState.RUNNING:
        status = job_status(job, position=None, eta_s=None)
        return max(1.0, own * (1.0 - status.overall_progress))
    ahead = max(0, (position or 1) - 1) * (throughput.job_p50_s or own)
    return ahead + own


def video_seconds(job: JobRecord) -> float:
    """The video's expected length, estimated from the dialogue as the preview did."""
    spec = job.spec
    return SpeechRates().seconds([line.text for line in spec.inputs.dialogue], spec.inputs.speech_speed)


def job_status(job: JobRecord, *, position: int | None, eta_s: float | None) -> JobStatus:
    return JobStatus(
        job_id=job.id,
        state=JobState(job.state),
        stage=job.stage,
        progress=job.progress,
        detail=job.progress_detail,
        position=position,
        eta_s=eta_s,
        cancel_requested=job.cancel_requested,
        attempts=job.attempts,
        error_user=job.error_user,
    )


async def load_status(queue: JobQueue, job: JobRecord, throughput: Throughput) -> JobStatus:
    """The job's status with its queue position and ETA (one read more while it is queued)."""
    position = await queue.queue_position(job.id) if job.state == JobState.QUEUED else None
    return job_status(job, position=position, eta_s=estimate_eta(job, position, throughput))


def progress_bar(fraction: float, width: int = BAR_WIDTH) -> str:
    """`▰▰▰▱▱▱▱▱▱▱▱▱ 25%` — block characters render the same in Discord and Telegram."""
    fraction = max(0.0, min(1.0, fraction))
    filled = round(fraction * width)
    return "▰" * filled + "▱" * (width - filled) + f" {int(fraction * 100)}%"


def _stage_text(status: JobStatus, locale: str | None) -> str:
    if status.stage is None:
        return text("stage.waiting", locale)
    label = text(f"stage.{status.stage}", locale) if f"stage.{status.stage}" in _STAGE_KEYS else status.stage
    return f"{label} {status.detail}" if status.detail else label


_STAGE_KEYS = {f"stage.{stage}" for stage in STAGE_WEIGHTS}


def _eta_text(status: JobStatus, locale: str | None) -> str:
    if status.eta_s is None:
        return text("status.eta_unknown", locale)
    return text("status.eta", locale, eta=duration_text(status.eta_s, locale))


def status_text(status: JobStatus, locale: str | None) -> str:
    """The status message of a job, a few short lines; the last line names the job."""
    state = status.state
    footer = text("status.job", locale, job_id=status.job_id)
    if state == JobState.QUEUED:
        head = text("status.queued", locale, position=status.position or 1)
        if status.attempts > 0:
            head = text("status.queued_retry", locale, attempt=status.attempts + 1)
        lines = [head, progress_bar(0.0), _eta_text(status, locale), footer]
    elif state == JobState.RUNNING and status.cancel_requested:
        lines = [text("status.cancelling", locale), progress_bar(status.overall_progress), footer]
    elif state == JobState.RUNNING:
        head = text("status.running", locale, stage=_stage_text(status, locale))
        lines = [head, progress_bar(status.overall_progress), _eta_text(status, locale), footer]
    elif state == JobState.SUCCEEDED:
        lines = [text("status.succeeded", locale), progress_bar(1.0), footer]
    elif state == JobState.CANCELLED:
        lines = [text("status.cancelled", locale, job_id=status.job_id)]
    else:  # failed or dead: the engine's user-safe reason is English, so Chinese users get a generic one
        reason = status.error_user if status.error_user and normalize_locale(locale) == "en" else None
        lines = [text("status.failed", locale, reason=reason or text("status.failed_reason", locale), job_id=status.job_id)]
    return "\n".join(lines)


def status_actions(status: JobStatus) -> tuple[Action, ...]:
    """Cancel while the job can still be stopped; nothing once it ended or is stopping."""
    if status.is_active and not status.cancel_requested:
        return (Action(Verb.CANCEL, status.job_id),)
    return ()
