"""Answers to the commands both chat front ends offer (/jobs, /show, /cancel, /voices, admin /queue),
as plain text and actions, so that each adapter only sends them.

Kept apart from `texts.py` (the catalog) because these compose several catalog entries with data from
the queue; nothing here knows a platform.
"""

from __future__ import annotations

import datetime as dt

from bot.core.actions import Action, Verb
from bot.core.status import JobStatus, status_actions
from bot.core.texts import duration_text, text
from bot.core.voices import list_voices
from storage.admin import QueueStats
from storage.contract import JobState
from storage.queue import JobRecord


def jobs_text(records: list[JobRecord], locale: str | None) -> str:
    """The user's jobs, newest first, one line each (or how to make a first one)."""
    if not records:
        return text("jobs.none", locale)
    lines = [text("jobs.header", locale)]
    for job in records:
        created = dt.datetime.fromtimestamp(job.created_at, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        lines.append(text("jobs.line", locale, job_id=job.id, state=text(f"state.{job.state}", locale), created=created))
    return "\n".join(lines)


def show_actions(status: JobStatus) -> tuple[Action, ...]:
    """/show's buttons: Cancel while the job can be stopped, Re-roll once it succeeded."""
    if status.state == JobState.SUCCEEDED:
        return (Action(Verb.REROLL, status.job_id),)
    return status_actions(status)


def cancel_text(status: JobStatus, locale: str | None) -> str:
    """What a cancel did: a queued job ends at once, a running one stops at the engine's next step."""
    key = "cancel.done" if status.state == JobState.CANCELLED else "cancel.requested"
    return text(key, locale, job_id=status.job_id)


def voices_text(locale: str | None) -> str:
    return "\n".join([text("voices.header", locale)] + [f"{v.id} — {v.label(locale)}" for v in list_voices()])


def queue_stats_text(stats: QueueStats, paused: dict[str, bool], locale: str | None) -> str:
    """The admin's view of the queue: counts, throughput, p50 wait and render time, the switches."""

    def seconds(value: float | None) -> str:
        return duration_text(value, locale) if value is not None else text("admin.unknown", locale)

    def switch(is_paused: bool) -> str:
        return text("admin.closed" if is_paused else "admin.open", locale)

    counts = stats.counts
    return text(
        "admin.stats",
        locale,
        queued=counts.get(JobState.QUEUED.value, 0),
        running=counts.get(JobState.RUNNING.value, 0),
        failed=counts.get(JobState.FAILED.value, 0) + counts.get(JobState.DEAD.value, 0),
        hour=stats.succeeded_last_hour,
        day=stats.succeeded_last_day,
        wait=seconds(stats.queue_wait.p50_s),
        render=seconds(stats.render_time.p50_s),
        intake=switch(paused["intake"]),
        claims=switch(paused["claims"]),
    )
