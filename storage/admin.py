"""Operator verbs that are not part of a job's life: statistics, retention and purge, users, workers.

Kept apart from `queue.py` so that the verbs bots and engines use stay small enough to read in one sitting.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import queries as q
from storage.contract import TERMINAL_STATES, JobState
from storage.media import INPUT_ROLES, RESULT_ROLES, MediaStore
from storage.queue import JobQueue
from storage.tables import Job, User, Worker

_TERMINAL = tuple(state.value for state in TERMINAL_STATES)


@dataclass(frozen=True)
class Percentiles:
    count: int
    p50_s: float | None
    p95_s: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Percentiles:
        if not values:
            return cls(0, None, None)
        if len(values) == 1:
            return cls(1, values[0], values[0])
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        return cls(len(values), cuts[49], cuts[94])


@dataclass(frozen=True)
class QueueStats:
    counts: dict[str, int]
    queue_wait: Percentiles
    render_time: Percentiles
    succeeded_last_hour: int
    succeeded_last_day: int
    window_s: float


async def stats(queue: JobQueue, *, window_s: float = 86_400.0) -> QueueStats:
    """Counts per state; queue wait and render time p50/p95 and throughput over the last `window_s`."""
    now = queue.clock()
    since = now - window_s
    async with queue.db.read() as conn:
        counts = dict((await conn.execute(select(Job.state, func.count()).group_by(Job.state))).all())
        started = (
            await conn.execute(select(Job.created_at, Job.started_at).where(Job.started_at >= since))
        ).all()
        finished = (
            await conn.execute(
                select(Job.started_at, Job.finished_at).where(
                    Job.state == JobState.SUCCEEDED, Job.finished_at >= since
                )
            )
        ).all()
    return QueueStats(
        counts={state.value: counts.get(state.value, 0) for state in JobState},
        queue_wait=Percentiles.of(sorted(s - c for c, s in started)),
        render_time=Percentiles.of(sorted(f - s for s, f in finished if s is not None)),
        succeeded_last_hour=sum(1 for _, f in finished if f >= now - 3600),
        succeeded_last_day=len(finished),
        window_s=window_s,
    )


async def purge(
    queue: JobQueue, media: MediaStore, *, older_than_s: float, states: Sequence[str] = _TERMINAL
) -> list[str]:
    """Delete finished jobs (rows, events and files) not touched for `older_than_s`. Active jobs never go."""
    states = tuple(s for s in states if s in _TERMINAL)
    cutoff = queue.clock() - older_than_s
    async with queue.db.read() as conn:
        job_ids = list((await conn.execute(*q.jobs_older_than(cutoff, states))).scalars())
    for job_id in job_ids:
        await media.remove_job(job_id)
    for start in range(0, len(job_ids), 500):
        batch = job_ids[start : start + 500]

        async def unit(conn: AsyncConnection, batch=batch) -> None:
            await conn.execute(*q.delete_jobs(batch))

        await queue.db.write(unit)
    return job_ids


async def enforce_retention(queue: JobQueue, media: MediaStore) -> dict[str, int]:
    """The janitor's pass: inputs go some hours after a job ends, results some days after, rows after a
    month; directories without a job row go once they are an hour old."""
    settings = queue.settings
    now = queue.clock()
    async with queue.db.read() as conn:
        inputs_due = list(
            (
                await conn.execute(
                    select(Job.id).where(Job.state.in_(_TERMINAL), Job.finished_at < now - settings.keep_inputs_hours * 3600)
                )
            ).scalars()
        )
        results_due = list(
            (
                await conn.execute(
                    select(Job.id).where(Job.state.in_(_TERMINAL), Job.finished_at < now - settings.keep_results_days * 86400)
                )
            ).scalars()
        )
    for job_id in inputs_due:
        await media.remove_roles(job_id, INPUT_ROLES)
    for job_id in results_due:
        await media.remove_roles(job_id, RESULT_ROLES)
    purged = await purge(queue, media, older_than_s=settings.keep_jobs_days * 86400)
    orphans = await media.remove_orphans(now=now)
    return {"inputs": len(inputs_due), "results": len(results_due), "jobs": len(purged), "orphans": len(orphans)}


# ---- users ------------------------------------------------------------------------------------------


async def set_user(
    queue: JobQueue,
    owner_key: str,
    *,
    blocked: bool | None = None,
    max_active: int | None = None,
    clear_quota: bool = False,
    note: str | None = None,
) -> None:
    """Block/unblock a user or set their quota. Blocking also cancels their queued jobs."""
    values: dict = {}
    if blocked is not None:
        values["blocked"] = blocked
    if max_active is not None or clear_quota:
        values["max_active"] = max_active
    if note is not None:
        values["note"] = note

    async def unit(conn: AsyncConnection) -> None:
        now = queue.clock()
        if await conn.scalar(select(User.owner_key).where(User.owner_key == owner_key)) is None:
            await conn.execute(insert(User).values(owner_key=owner_key, created_at=now, blocked=False))
        if values:
            await conn.execute(update(User).where(User.owner_key == owner_key).values(**values))
        if blocked:
            cancelled = (
                await conn.execute(
                    update(Job)
                    .where(Job.owner_key == owner_key, Job.state == JobState.QUEUED)
                    .values(state=JobState.CANCELLED.value, finished_at=now, updated_at=now)
                    .returning(Job.id)
                )
            ).scalars()
            for job_id in list(cancelled):
                await conn.execute(*q.insert_event(job_id, now, "cancelled", "admin", "user blocked"))

    await queue.db.write(unit)


async def list_users(queue: JobQueue, *, limit: int = 100) -> list[dict]:
    active = (
        select(Job.owner_key, func.count().label("active"))
        .where(Job.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]))
        .group_by(Job.owner_key)
        .subquery()
    )
    total = select(Job.owner_key, func.count().label("total")).group_by(Job.owner_key).subquery()
    stmt = (
        select(User, func.coalesce(active.c.active, 0), func.coalesce(total.c.total, 0))
        .outerjoin(active, active.c.owner_key == User.owner_key)
        .outerjoin(total, total.c.owner_key == User.owner_key)
        .order_by(User.owner_key)
        .limit(limit)
    )
    async with queue.db.read() as conn:
        rows = (await conn.execute(stmt)).all()
    return [
        {
            "owner_key": row.owner_key,
            "blocked": bool(row.blocked),
            "max_active": row.max_active,
            "active_jobs": row[-2],
            "total_jobs": row[-1],
            "consent": row.consent_at is not None,
            "note": row.note,
        }
        for row in rows
    ]


async def record_consent(queue: JobQueue, owner_key: str) -> None:
    async def unit(conn: AsyncConnection) -> None:
        now = queue.clock()
        if await conn.scalar(select(User.owner_key).where(User.owner_key == owner_key)) is None:
            await conn.execute(insert(User).values(owner_key=owner_key, created_at=now, blocked=False, consent_at=now))
        else:
            await conn.execute(update(User).where(User.owner_key == owner_key).values(consent_at=now))

    await queue.db.write(unit)


async def has_consent(queue: JobQueue, owner_key: str) -> bool:
    async with queue.db.read() as conn:
        return await conn.scalar(select(User.consent_at).where(User.owner_key == owner_key)) is not None


# ---- workers ----------------------------------------------------------------------------------------


async def register_worker(queue: JobQueue, worker_id: str, *, host: str, pid: int, world_size: int, info: dict) -> None:
    async def unit(conn: AsyncConnection) -> None:
        now = queue.clock()
        await conn.execute(delete(Worker).where(Worker.id == worker_id))
        await conn.execute(
            insert(Worker).values(
                id=worker_id,
                host=host,
                pid=pid,
                world_size=world_size,
                state="idle",
                drain_requested=False,
                started_at=now,
                heartbeat_at=now,
                info_json=json.dumps(info, sort_keys=True),
            )
        )

    await queue.db.write(unit)


async def worker_heartbeat(queue: JobQueue, worker_id: str, *, state: str, current_job_id: str | None) -> bool:
    """Record that the worker is alive; returns whether an operator asked it to drain."""

    async def unit(conn: AsyncConnection) -> bool:
        row = (
            await conn.execute(
                update(Worker)
                .where(Worker.id == worker_id)
                .values(state=state, current_job_id=current_job_id, heartbeat_at=queue.clock())
                .returning(Worker.drain_requested)
            )
        ).first()
        return bool(row and row.drain_requested)

    return await queue.db.write(unit)


async def request_drain(queue: JobQueue, worker_id: str | None = None) -> int:
    """Ask one worker (or all) to finish the current job and stop. Returns how many were asked."""

    async def unit(conn: AsyncConnection) -> int:
        stmt = update(Worker).values(drain_requested=True)
        if worker_id is not None:
            stmt = stmt.where(Worker.id == worker_id)
        return (await conn.execute(stmt)).rowcount

    return await queue.db.write(unit)


async def list_workers(queue: JobQueue, *, stale_after_s: float | None = None) -> list[dict]:
    stale_after_s = stale_after_s or queue.settings.lease_s
    now = queue.clock()
    async with queue.db.read() as conn:
        rows = (await conn.execute(select(Worker).order_by(Worker.id))).all()
    return [
        {
            "id": w.id,
            "host": w.host,
            "pid": w.pid,
            "world_size": w.world_size,
            "state": w.state if now - w.heartbeat_at <= stale_after_s else "lost",
            "current_job_id": w.current_job_id,
            "drain_requested": bool(w.drain_requested),
            "heartbeat_age_s": round(now - w.heartbeat_at, 1),
            "started_at": w.started_at,
        }
        for w in rows
    ]
