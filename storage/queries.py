"""Every statement that changes a job, one function per verb, each a single SQL statement.

The SQLite/PostgreSQL difference lives here and nowhere else: the claim's sub-select carries
`FOR UPDATE SKIP LOCKED`, which PostgreSQL uses to let several hosts claim at once and which SQLite's
dialect drops (there `BEGIN IMMEDIATE` already serialises writers). Fenced statements match only the row
still held under `lease_token` in state `running`: a stale worker's write matches nothing.
"""

from __future__ import annotations

from sqlalchemy import and_, case, delete, insert, or_, select, update
from sqlalchemy.sql import Delete, Insert, Select, Update

from storage.contract import DeliveryState, JobState
from storage.tables import Job, JobEvent, QueueControl

J = Job.__table__
RUNNING, QUEUED = JobState.RUNNING.value, JobState.QUEUED.value


def insert_event(job_id: str, at: float, kind: str, actor: str | None = None, detail: str | None = None) -> Insert:
    return insert(JobEvent).values(job_id=job_id, at=at, kind=kind, actor=actor, detail=detail)


def claim_next(*, worker: str, token: str, now: float, lease_s: float, timeout_s: float) -> Update:
    """Take the first claimable job: highest priority, then round-robin over users, then oldest."""
    claims_paused = select(QueueControl.claims_paused).where(QueueControl.id == 1).scalar_subquery()
    next_id = (
        select(J.c.id)
        .where(J.c.state == QUEUED, J.c.run_after <= now, or_(claims_paused.is_(None), claims_paused.is_(False)))
        .order_by(J.c.priority.desc(), J.c.fair_round, J.c.created_at, J.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    return (
        update(J)
        .where(J.c.id == next_id, J.c.state == QUEUED)
        .values(
            state=RUNNING,
            attempts=J.c.attempts + 1,
            lease_owner=worker,
            lease_token=token,
            lease_expires_at=now + lease_s,
            deadline_at=now + timeout_s,
            heartbeat_at=now,
            started_at=now,
            stage=None,
            progress=0.0,
            progress_detail=None,
            updated_at=now,
        )
        .returning(*J.c)
    )


def _fenced(job_id: str, token: str) -> Update:
    return update(J).where(J.c.id == job_id, J.c.lease_token == token, J.c.state == RUNNING)


def extend_lease(job_id: str, token: str, *, now: float, lease_s: float) -> Update:
    return _fenced(job_id, token).values(heartbeat_at=now, lease_expires_at=now + lease_s, updated_at=now).returning(
        J.c.cancel_requested
    )


def report_progress(
    job_id: str, token: str, *, now: float, lease_s: float, stage: str, progress: float, detail: str | None
) -> Update:
    return (
        _fenced(job_id, token)
        .values(
            stage=stage,
            progress=progress,
            progress_detail=detail,
            heartbeat_at=now,
            lease_expires_at=now + lease_s,
            updated_at=now,
        )
        .returning(J.c.cancel_requested)
    )


def _release() -> dict:
    return {"lease_token": None, "lease_owner": None, "lease_expires_at": None, "deadline_at": None}


def complete(job_id: str, token: str, *, now: float, result_json: str, needs_delivery: bool) -> Update:
    delivery = DeliveryState.PENDING if needs_delivery else DeliveryState.NONE
    return (
        _fenced(job_id, token)
        .values(
            state=JobState.SUCCEEDED.value,
            result_json=result_json,
            finished_at=now,
            updated_at=now,
            progress=1.0,
            delivery_state=delivery.value,
            **_release(),
        )
        .returning(J.c.id)
    )


def fail(
    job_id: str, token: str, *, now: float, retry: bool, run_after: float, error_user: str, error_admin: str
) -> Update:
    """Retry later (queued), or give up (failed); a job whose owner asked to cancel ends cancelled."""
    next_state = case(
        (J.c.cancel_requested.is_(True), JobState.CANCELLED.value),
        (and_(retry, J.c.attempts < J.c.max_attempts), QUEUED),
        else_=JobState.FAILED.value,
    )
    finished = case((next_state == QUEUED, None), else_=now)
    return (
        _fenced(job_id, token)
        .values(
            state=next_state,
            run_after=run_after,
            finished_at=finished,
            error_user=error_user,
            error_admin=error_admin,
            updated_at=now,
            **_release(),
        )
        .returning(J.c.state)
    )


def requeue_for_shutdown(job_id: str, token: str, *, now: float) -> Update:
    """Give the job back without charging the attempt the claim counted."""
    return (
        _fenced(job_id, token)
        .values(
            state=QUEUED,
            attempts=J.c.attempts - 1,
            shutdown_requeues=J.c.shutdown_requeues + 1,
            run_after=now,
            stage=None,
            updated_at=now,
            **_release(),
        )
        .returning(J.c.id)
    )


def finish_cancelled(job_id: str, token: str, *, now: float) -> Update:
    return (
        _fenced(job_id, token)
        .values(state=JobState.CANCELLED.value, finished_at=now, updated_at=now, **_release())
        .returning(J.c.id)
    )


def cancel(job_id: str, *, now: float, owner_key: str | None) -> Update:
    """Queued → cancelled at once; running → cancel requested (the worker observes it at a step boundary)."""
    stmt = update(J).where(J.c.id == job_id, J.c.state.in_([QUEUED, RUNNING]))
    if owner_key is not None:
        stmt = stmt.where(J.c.owner_key == owner_key)
    was_queued = J.c.state == QUEUED
    return stmt.values(
        state=case((was_queued, JobState.CANCELLED.value), else_=J.c.state),
        cancel_requested=case((was_queued, J.c.cancel_requested), else_=True),
        finished_at=case((was_queued, now), else_=J.c.finished_at),
        updated_at=now,
    ).returning(J.c.state, J.c.cancel_requested)


def retry(job_id: str, *, now: float, states: tuple[str, ...]) -> Update:
    return (
        update(J)
        .where(J.c.id == job_id, J.c.state.in_(states))
        .values(
            state=QUEUED,
            attempts=0,
            run_after=now,
            cancel_requested=False,
            finished_at=None,
            stage=None,
            progress=0.0,
            progress_detail=None,
            result_json=None,
            delivery_state=DeliveryState.NONE.value,
            updated_at=now,
        )
        .returning(J.c.id)
    )


def reap_expired(*, now: float, run_after: float) -> Update:
    """Leases that ran out (or jobs past their hard deadline) go back to the queue, or to `dead`."""
    next_state = case(
        (J.c.cancel_requested.is_(True), JobState.CANCELLED.value),
        (J.c.attempts >= J.c.max_attempts, JobState.DEAD.value),
        else_=QUEUED,
    )
    timed_out = J.c.deadline_at < now
    return (
        update(J)
        .where(J.c.state == RUNNING, or_(J.c.lease_expires_at < now, timed_out))
        .values(
            state=next_state,
            run_after=run_after,
            finished_at=case((next_state == QUEUED, None), else_=now),
            error_user="The render stopped unexpectedly.",
            error_admin=case((timed_out, "job timeout"), else_="lease expired"),
            updated_at=now,
            **_release(),
        )
        .returning(J.c.id, J.c.state, J.c.error_admin)
    )


def claim_delivery(*, platform: str, token: str, now: float, lease_s: float) -> Update:
    """Take one finished job to post back; an expired `delivering` claim is taken over (and flagged)."""
    next_id = (
        select(J.c.id)
        .where(
            J.c.platform == platform,
            J.c.state == JobState.SUCCEEDED.value,
            or_(
                J.c.delivery_state == DeliveryState.PENDING.value,
                and_(J.c.delivery_state == DeliveryState.DELIVERING.value, J.c.delivery_expires_at < now),
            ),
        )
        .order_by(J.c.finished_at, J.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    return (
        update(J)
        .where(J.c.id == next_id)
        .values(
            delivery_state=DeliveryState.DELIVERING.value,
            delivery_token=token,
            delivery_expires_at=now + lease_s,
            delivery_attempts=J.c.delivery_attempts + 1,
            updated_at=now,
        )
        .returning(*J.c)
    )


def _delivery_fenced(job_id: str, token: str) -> Update:
    return update(J).where(
        J.c.id == job_id, J.c.delivery_token == token, J.c.delivery_state == DeliveryState.DELIVERING.value
    )


def mark_delivered(job_id: str, token: str, *, now: float, message_id: str) -> Update:
    return (
        _delivery_fenced(job_id, token)
        .values(
            delivery_state=DeliveryState.DELIVERED.value,
            delivered_message_id=message_id,
            delivered_at=now,
            delivery_token=None,
            delivery_expires_at=None,
            updated_at=now,
        )
        .returning(J.c.id)
    )


def mark_delivery_failed(job_id: str, token: str, *, now: float, retry: bool, error_admin: str) -> Update:
    state = DeliveryState.PENDING if retry else DeliveryState.FAILED
    return (
        _delivery_fenced(job_id, token)
        .values(
            delivery_state=state.value,
            delivery_token=None,
            delivery_expires_at=None,
            error_admin=error_admin,
            updated_at=now,
        )
        .returning(J.c.id)
    )


def jobs_older_than(cutoff: float, states: tuple[str, ...]) -> Select:
    return select(J.c.id).where(J.c.state.in_(states), J.c.updated_at < cutoff)


def delete_jobs(job_ids: list[str]) -> Delete:
    return delete(J).where(J.c.id.in_(job_ids))
