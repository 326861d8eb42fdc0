"""`JobQueue`: the verbs bots, engine and operators use. Each verb is one short transaction.

Guarantees (tested in tests/storage): a job is claimed by at most one live lease; attempts are counted at
claim, so a crash counts; every worker write after the claim is fenced by the lease token and a stale write
raises `LeaseLost` having changed nothing; a result is recorded once; delivery is claimed under its own token
and a re-delivery after a crash is flagged so the bot checks the platform before posting again. Execution is
at-least-once: a worker that dies mid-job has its lease reaped and the job runs again.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import queries as q
from storage.contract import ACTIVE_STATES, JobResult, JobSpec, JobState
from storage.db import Database
from storage.errors import InvalidTransition, JobNotFound, LeaseLost, SubmitRefused
from storage.settings import QueueSettings
from storage.tables import Job, JobEvent, QueueControl, User

Clock = Callable[[], float]
_ACTIVE = tuple(state.value for state in ACTIVE_STATES)


@dataclass(frozen=True)
class JobRecord:
    """A row of `jobs`, read-only. `spec` parses the stored JSON on demand."""

    id: str
    owner_key: str
    platform: str
    chat_id: str
    idempotency_key: str | None
    spec_version: int
    spec_json: str
    state: str
    priority: int
    fair_round: int
    run_after: float
    attempts: int
    max_attempts: int
    shutdown_requeues: int
    stage: str | None
    progress: float
    progress_detail: str | None
    lease_owner: str | None
    lease_token: str | None
    lease_expires_at: float | None
    deadline_at: float | None
    heartbeat_at: float | None
    cancel_requested: bool
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    error_user: str | None
    error_admin: str | None
    result_json: str | None
    status_message_id: str | None
    delivery_state: str
    delivery_attempts: int
    delivery_token: str | None
    delivery_expires_at: float | None
    delivered_message_id: str | None
    delivered_at: float | None

    @classmethod
    def from_row(cls, row) -> JobRecord:
        data = row._mapping
        return cls(**{f.name: data[f.name] for f in fields(cls)})

    @property
    def spec(self) -> JobSpec:
        return JobSpec.from_json(self.spec_json)

    @property
    def result(self) -> JobResult | None:
        return JobResult.model_validate_json(self.result_json) if self.result_json else None


@dataclass(frozen=True)
class Submitted:
    job_id: str
    created: bool  # False: the idempotency key matched an existing job, which is returned instead


@dataclass(frozen=True)
class Event:
    at: float
    kind: str
    actor: str | None
    detail: str | None


class JobQueue:
    def __init__(self, db: Database, settings: QueueSettings | None = None, clock: Clock = time.time) -> None:
        self.db = db
        self.settings = settings or QueueSettings()
        self.clock = clock

    # ---- intake -------------------------------------------------------------------------------------

    async def submit(self, spec: JobSpec, *, job_id: str | None = None, priority: int = 0) -> Submitted:
        """Queue a validated spec; refuses politely when paused, full, over the user's limit or cooling down."""
        job_id = job_id or str(uuid.uuid4())
        owner = spec.requester.owner_key
        limits = self.settings

        async def unit(conn: AsyncConnection) -> Submitted:
            now = self.clock()
            # Serialise submissions: on PostgreSQL through the control row's lock (SQLite's BEGIN IMMEDIATE
            # already did), so that the limit checks below and the insert are one decision.
            control = (
                await conn.execute(select(QueueControl).where(QueueControl.id == 1).with_for_update())
            ).first()
            if spec.idempotency_key is not None:
                existing = await conn.scalar(select(Job.id).where(Job.idempotency_key == spec.idempotency_key))
                if existing is not None:
                    return Submitted(existing, created=False)
            if control is not None and control.intake_paused:
                raise SubmitRefused("paused", "Duet is not taking new videos right now. Please try again later.")
            user = await self._user_row(conn, owner, now)
            if user.blocked:
                raise SubmitRefused("blocked", "You cannot submit videos.", f"{owner} is blocked")
            cooldown = limits.submit_cooldown_s
            if user.last_submit_at is not None and now - user.last_submit_at < cooldown:
                wait = int(cooldown - (now - user.last_submit_at)) + 1
                raise SubmitRefused("cooldown", f"Please wait {wait} s before your next video.")
            active = await conn.scalar(
                select(func.count()).select_from(Job).where(Job.owner_key == owner, Job.state.in_(_ACTIVE))
            )
            max_active = user.max_active if user.max_active is not None else limits.max_active_per_user
            if active >= max_active:
                raise SubmitRefused(
                    "user_limit",
                    f"You already have {active} video(s) in progress (limit {max_active}). "
                    "Wait for one to finish or cancel it.",
                )
            queued = await conn.scalar(select(func.count()).select_from(Job).where(Job.state == JobState.QUEUED))
            if queued >= limits.max_queued:
                raise SubmitRefused(
                    "queue_full", "The queue is full right now. Please try again in a few minutes.", f"{queued} queued"
                )
            await conn.execute(insert(Job).values(**self._new_row(spec, job_id, now, priority, fair_round=active)))
            await conn.execute(update(User).where(User.owner_key == owner).values(last_submit_at=now))
            await conn.execute(*q.insert_event(job_id, now, "submitted", owner))
            return Submitted(job_id, created=True)

        try:
            return await self.db.write(unit)
        except IntegrityError:
            # Two submissions with one idempotency key raced past the check: the loser returns the winner.
            if spec.idempotency_key is None:
                raise
            async with self.db.read() as conn:
                existing = await conn.scalar(select(Job.id).where(Job.idempotency_key == spec.idempotency_key))
            if existing is None:
                raise
            return Submitted(existing, created=False)

    def _new_row(self, spec: JobSpec, job_id: str, now: float, priority: int, fair_round: int) -> dict:
        return {
            "id": job_id,
            "owner_key": spec.requester.owner_key,
            "platform": spec.requester.platform.value,
            "chat_id": spec.requester.chat_id,
            "idempotency_key": spec.idempotency_key,
            "spec_version": spec.spec_version,
            "spec_json": spec.model_dump_json(),
            "state": JobState.QUEUED.value,
            "priority": priority,
            "fair_round": fair_round,
            "run_after": now,
            "attempts": 0,
            "max_attempts": self.settings.max_attempts,
            "created_at": now,
            "updated_at": now,
        }

    async def _user_row(self, conn: AsyncConnection, owner: str, now: float):
        row = (await conn.execute(select(User).where(User.owner_key == owner))).first()
        if row is None:
            await conn.execute(insert(User).values(owner_key=owner, created_at=now, blocked=False))
            row = (await conn.execute(select(User).where(User.owner_key == owner))).first()
        return row

    # ---- reading ------------------------------------------------------------------------------------

    async def get(self, job_id: str, *, owner_key: str | None = None) -> JobRecord:
        """One job; with `owner_key`, only if it is theirs (someone else's job is simply not found)."""
        stmt = select(Job.__table__).where(Job.id == job_id)
        if owner_key is not None:
            stmt = stmt.where(Job.owner_key == owner_key)
        async with self.db.read() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            raise JobNotFound(job_id)
        return JobRecord.from_row(row)

    async def list_jobs(
        self,
        *,
        states: Sequence[str] = (),
        owner_key: str | None = None,
        platform: str | None = None,
        limit: int = 50,
    ) -> list[JobRecord]:
        stmt = select(Job.__table__).order_by(Job.created_at.desc(), Job.id).limit(limit)
        if states:
            stmt = stmt.where(Job.state.in_(list(states)))
        if owner_key is not None:
            stmt = stmt.where(Job.owner_key == owner_key)
        if platform is not None:
            stmt = stmt.where(Job.platform == platform)
        async with self.db.read() as conn:
            return [JobRecord.from_row(row) for row in await conn.execute(stmt)]

    async def events(self, job_id: str) -> list[Event]:
        stmt = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        async with self.db.read() as conn:
            return [Event(r.at, r.kind, r.actor, r.detail) for r in await conn.execute(stmt)]

    async def queue_position(self, job_id: str) -> int | None:
        """1-based place in the claim order, or None when the job is not queued."""
        job = await self.get(job_id)
        if job.state != JobState.QUEUED:
            return None
        J = Job
        # Mirrors the claim order of queries.claim_next: priority, fair round, age, id.
        same_priority = J.priority == job.priority
        same_round = same_priority & (J.fair_round == job.fair_round)
        same_age = same_round & (J.created_at == job.created_at)
        ahead = (
            (J.priority > job.priority)
            | (same_priority & (J.fair_round < job.fair_round))
            | (same_round & (J.created_at < job.created_at))
            | (same_age & (J.id < job.id))
        )
        stmt = select(func.count()).select_from(J).where(J.state == JobState.QUEUED, ahead)
        async with self.db.read() as conn:
            return int(await conn.scalar(stmt)) + 1

    # ---- the worker's side --------------------------------------------------------------------------

    async def claim(self, worker: str, *, job_id: str | None = None) -> JobRecord | None:
        """Lease the next job to `worker` (one atomic statement), or None when nothing is claimable.

        With `job_id`, only that job, and only if it is claimable now (queued, due, claims not paused): a one-shot
        engine started for one job must not take someone else's that is ahead of it. None then says nothing about
        why; `get` tells whether it is worth waiting for.
        """
        token = str(uuid.uuid4())
        lease = {"worker": worker, "token": token, "lease_s": self.settings.lease_s,
                 "timeout_s": self.settings.job_timeout_s}  # fmt: skip

        async def unit(conn: AsyncConnection) -> JobRecord | None:
            now = self.clock()
            query = q.claim_next(now=now, **lease) if job_id is None else q.claim_job(job_id, now=now, **lease)
            row = (await conn.execute(*query)).first()
            if row is None:
                return None
            await conn.execute(*q.insert_event(row.id, now, "claimed", worker, f"attempt {row.attempts}"))
            return JobRecord.from_row(row)

        return await self.db.write(unit)

    async def heartbeat(self, job_id: str, token: str) -> bool:
        """Extend the lease; returns whether the owner asked to cancel. Raises LeaseLost."""
        now = self.clock()
        query = q.extend_lease(job_id, token, now=now, lease_s=self.settings.lease_s)
        return await self._fenced(job_id, query)

    async def progress(self, job_id: str, token: str, stage: str, progress: float, detail: str | None = None) -> bool:
        """Record stage and progress (also extends the lease); returns whether cancel was requested."""
        now = self.clock()
        query = q.report_progress(
            job_id, token, now=now, lease_s=self.settings.lease_s, stage=stage, progress=progress, detail=detail
        )
        return await self._fenced(job_id, query)

    async def set_stage(self, job_id: str, token: str, stage: str) -> bool:
        """Enter a new stage: progress with an event in the job's history."""

        async def unit(conn: AsyncConnection) -> bool:
            now = self.clock()
            query = q.report_progress(
                job_id, token, now=now, lease_s=self.settings.lease_s, stage=stage, progress=0.0, detail=None
            )
            row = (await conn.execute(*query)).first()
            if row is None:
                raise LeaseLost(job_id)
            await conn.execute(*q.insert_event(job_id, now, "stage", None, stage))
            return bool(row[0])

        return await self.db.write(unit)

    async def _fenced(self, job_id: str, query: q.Query) -> bool:
        async def unit(conn: AsyncConnection) -> bool:
            row = (await conn.execute(*query)).first()
            if row is None:
                raise LeaseLost(job_id)
            return bool(row[0])

        return await self.db.write(unit)

    async def complete(self, job_id: str, token: str, result: JobResult) -> None:
        """Record the result, once: a second completion (or a stale worker's) raises LeaseLost."""

        async def unit(conn: AsyncConnection) -> None:
            now = self.clock()
            query = q.complete(job_id, token, now=now, result_json=result.model_dump_json())
            if (await conn.execute(*query)).first() is None:
                raise LeaseLost(job_id)
            await conn.execute(*q.insert_event(job_id, now, "succeeded", None, f"{result.duration_s:.2f} s"))

        await self.db.write(unit)

    async def fail(
        self, job_id: str, token: str, *, error_user: str, error_admin: str, retryable: bool = True
    ) -> JobState:
        """End this attempt with an error: retried later with backoff, or failed for good."""

        async def unit(conn: AsyncConnection) -> JobState:
            now = self.clock()
            attempts = await conn.scalar(select(Job.attempts).where(Job.id == job_id)) or 1
            query = q.fail(
                job_id,
                token,
                now=now,
                retry=retryable,
                run_after=now + self._backoff(attempts),
                error_user=error_user,
                error_admin=error_admin,
            )
            row = (await conn.execute(*query)).first()
            if row is None:
                raise LeaseLost(job_id)
            state = JobState(row.state)
            await conn.execute(*q.insert_event(job_id, now, "failed" if state != JobState.QUEUED else "retry_scheduled", None, error_admin))
            return state

        return await self.db.write(unit)

    def _backoff(self, attempts: int) -> float:
        base = self.settings.retry_backoff_s * 2 ** max(0, attempts - 1)
        return min(self.settings.retry_backoff_max_s, base) * random.uniform(0.8, 1.2)

    async def requeue(self, job_id: str, token: str, reason: str = "shutdown") -> None:
        """The worker stops now (SIGTERM): the job goes back to the queue and the attempt is not charged."""
        await self._fenced_event(job_id, q.requeue_for_shutdown(job_id, token, now=self.clock()), "requeued", reason)

    async def finish_cancelled(self, job_id: str, token: str) -> None:
        """The worker saw the cancel request and stopped at a step boundary."""
        await self._fenced_event(job_id, q.finish_cancelled(job_id, token, now=self.clock()), "cancelled", "by worker")

    async def _fenced_event(self, job_id: str, query: q.Query, kind: str, detail: str | None) -> None:
        async def unit(conn: AsyncConnection) -> None:
            if (await conn.execute(*query)).first() is None:
                raise LeaseLost(job_id)
            await conn.execute(*q.insert_event(job_id, self.clock(), kind, None, detail))

        await self.db.write(unit)

    # ---- owners and operators -----------------------------------------------------------------------

    async def cancel(self, job_id: str, *, actor: str, is_admin: bool = False) -> JobState:
        """Cancel for `actor` (an owner key). Returns the state after the call: `cancelled` for a queued
        job, `running` (with cancel requested) for a running one. Someone else's job is not found."""

        async def unit(conn: AsyncConnection) -> JobState:
            now = self.clock()
            row = (await conn.execute(*q.cancel(job_id, now=now, owner_key=None if is_admin else actor))).first()
            if row is None:
                stmt = select(Job.state).where(Job.id == job_id)
                if not is_admin:
                    stmt = stmt.where(Job.owner_key == actor)
                state = await conn.scalar(stmt)
                if state is None:
                    raise JobNotFound(job_id)
                raise InvalidTransition(f"This job has already ended ({state}).", f"cancel of {state} job")
            kind = "cancelled" if row.state == JobState.CANCELLED else "cancel_requested"
            await conn.execute(*q.insert_event(job_id, now, kind, actor))
            return JobState(row.state)

        return await self.db.write(unit)

    async def retry(self, job_id: str, *, actor: str = "admin") -> None:
        """Put a failed, dead or cancelled job back in the queue with fresh attempts."""
        terminal = (JobState.FAILED.value, JobState.DEAD.value, JobState.CANCELLED.value)

        async def unit(conn: AsyncConnection) -> None:
            now = self.clock()
            if (await conn.execute(*q.retry(job_id, now=now, states=terminal))).first() is None:
                state = await conn.scalar(select(Job.state).where(Job.id == job_id))
                if state is None:
                    raise JobNotFound(job_id)
                raise InvalidTransition(f"A {state} job cannot be retried.", f"retry of {state} job")
            await conn.execute(*q.insert_event(job_id, now, "retried", actor))

        await self.db.write(unit)

    async def set_status_message(self, job_id: str, message_id: str) -> None:
        async def unit(conn: AsyncConnection) -> None:
            await conn.execute(update(Job).where(Job.id == job_id).values(status_message_id=message_id))

        await self.db.write(unit)

    async def reap(self) -> list[tuple[str, JobState]]:
        """Requeue (or bury) jobs whose lease expired or whose hard deadline passed. Safe to run anywhere."""

        async def unit(conn: AsyncConnection) -> list[tuple[str, JobState]]:
            now = self.clock()
            rows = (await conn.execute(*q.reap_expired(now=now, run_after=now + self.settings.retry_backoff_s))).all()
            for row in rows:
                await conn.execute(*q.insert_event(row.id, now, "reaped", None, f"{row.error_admin} -> {row.state}"))
            return [(row.id, JobState(row.state)) for row in rows]

        return await self.db.write(unit)

    # ---- delivery -----------------------------------------------------------------------------------

    async def claim_delivery(self, platform: str, *, lease_s: float = 120.0) -> tuple[JobRecord, str] | None:
        """Take one succeeded job of `platform` to post. `delivery_attempts > 1` on the record means an
        earlier delivery may have posted before crashing: check the platform before posting again."""
        token = str(uuid.uuid4())

        async def unit(conn: AsyncConnection) -> tuple[JobRecord, str] | None:
            now = self.clock()
            row = (await conn.execute(*q.claim_delivery(platform=platform, token=token, now=now, lease_s=lease_s))).first()
            if row is None:
                return None
            await conn.execute(*q.insert_event(row.id, now, "delivering", None, f"attempt {row.delivery_attempts}"))
            return JobRecord.from_row(row), token

        return await self.db.write(unit)

    async def mark_delivered(self, job_id: str, token: str, message_id: str) -> None:
        query = q.mark_delivered(job_id, token, now=self.clock(), message_id=message_id)
        await self._delivery_write(job_id, query, "delivered", message_id)

    async def mark_delivery_failed(self, job_id: str, token: str, *, error_admin: str, retry: bool) -> None:
        query = q.mark_delivery_failed(job_id, token, now=self.clock(), retry=retry, error_admin=error_admin)
        await self._delivery_write(job_id, query, "delivery_failed", error_admin)

    async def _delivery_write(self, job_id: str, query: q.Query, kind: str, detail: str) -> None:
        async def unit(conn: AsyncConnection) -> None:
            if (await conn.execute(*query)).first() is None:
                raise LeaseLost(job_id)
            await conn.execute(*q.insert_event(job_id, self.clock(), kind, None, detail))

        await self.db.write(unit)

    # ---- switches -----------------------------------------------------------------------------------

    async def set_paused(self, *, intake: bool | None = None, claims: bool | None = None, reason: str | None = None) -> None:
        values: dict = {"updated_at": self.clock(), "reason": reason}
        if intake is not None:
            values["intake_paused"] = intake
        if claims is not None:
            values["claims_paused"] = claims

        async def unit(conn: AsyncConnection) -> None:
            result = await conn.execute(update(QueueControl).where(QueueControl.id == 1).values(**values))
            if result.rowcount == 0:
                await conn.execute(insert(QueueControl).values(id=1, **values))

        await self.db.write(unit)

    async def paused(self) -> dict[str, bool]:
        async with self.db.read() as conn:
            row = (await conn.execute(select(QueueControl).where(QueueControl.id == 1))).first()
        return {
            "intake": bool(row and row.intake_paused),
            "claims": bool(row and row.claims_paused),
        }
