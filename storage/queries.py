"""Every statement that changes a job, one function per verb, each a single SQL statement.

Each function returns `(statement, parameters)` for `conn.execute(*q.verb(...))`. The statement objects are
built once and cached (values travel as bound parameters), so the hot path neither rebuilds nor recompiles
SQL. The SQLite/PostgreSQL difference lives here and nowhere else: the claim's sub-select carries
`FOR UPDATE SKIP LOCKED`, which PostgreSQL uses to let several hosts claim at once and which SQLite's
dialect drops (there `BEGIN IMMEDIATE` already serialises writers). Fenced statements match only the row
still held under `lease_token` in state `running`: a stale worker's write matches nothing.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import Boolean, Double, and_, bindparam, case, delete, insert, or_, select, update
from sqlalchemy.sql import Executable

from storage.contract import DeliveryState, JobState, Platform
from storage.tables import Job, JobEvent, QueueControl

J = Job.__table__
RUNNING, QUEUED = JobState.RUNNING.value, JobState.QUEUED.value
Query = tuple[Executable, dict[str, Any]]


# Typed where PostgreSQL cannot infer a parameter's type from its context (inside CASE, or AND).
_TYPES = {"now": Double(), "lease_until": Double(), "deadline": Double(), "run_after": Double(), "retry": Boolean()}


def _p(name: str):
    return bindparam(f"p_{name}", type_=_TYPES.get(name))


# ---- history ----------------------------------------------------------------------------------------


@cache
def _insert_event():
    return insert(JobEvent).values(
        job_id=_p("job"), at=_p("now"), kind=_p("kind"), actor=_p("actor"), detail=_p("detail")
    )


def insert_event(job_id: str, at: float, kind: str, actor: str | None = None, detail: str | None = None) -> Query:
    return _insert_event(), {"p_job": job_id, "p_now": at, "p_kind": kind, "p_actor": actor, "p_detail": detail}


# ---- the worker's verbs -----------------------------------------------------------------------------


def _claimable():
    """A job a worker may take now: queued, due, and claims not paused by an operator."""
    claims_paused = select(QueueControl.claims_paused).where(QueueControl.id == 1).scalar_subquery()
    return and_(J.c.state == QUEUED, J.c.run_after <= _p("now"), or_(claims_paused.is_(None), claims_paused.is_(False)))


def _lease_to_worker(stmt):
    """The claim's state change: running under a new lease; the attempt is counted here, so a crash counts."""
    return stmt.values(
        state=RUNNING,
        attempts=J.c.attempts + 1,
        lease_owner=_p("worker"),
        lease_token=_p("token"),
        lease_expires_at=_p("lease_until"),
        deadline_at=_p("deadline"),
        heartbeat_at=_p("now"),
        started_at=_p("now"),
        stage=None,
        progress=0.0,
        progress_detail=None,
        updated_at=_p("now"),
    ).returning(*J.c)


def _claim_params(worker: str, token: str, now: float, lease_s: float, timeout_s: float) -> dict[str, Any]:
    return {"p_worker": worker, "p_token": token, "p_now": now, "p_lease_until": now + lease_s,
            "p_deadline": now + timeout_s}  # fmt: skip


@cache
def _claim_next():
    next_id = (
        select(J.c.id)
        .where(_claimable())
        .order_by(J.c.priority.desc(), J.c.fair_round, J.c.created_at, J.c.id)  # = ix_jobs_claim_order
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    return _lease_to_worker(update(J).where(J.c.id == next_id, J.c.state == QUEUED))


def claim_next(*, worker: str, token: str, now: float, lease_s: float, timeout_s: float) -> Query:
    """Take the first claimable job: highest priority, then round-robin over users, then oldest."""
    return _claim_next(), _claim_params(worker, token, now, lease_s, timeout_s)


@cache
def _claim_job():
    # No SKIP LOCKED needed: on PostgreSQL a second claimer of the same row waits for the first to commit, then
    # re-checks the WHERE against the row it left (running) and matches nothing.
    return _lease_to_worker(update(J).where(J.c.id == _p("job"), _claimable()))


def claim_job(job_id: str, *, worker: str, token: str, now: float, lease_s: float, timeout_s: float) -> Query:
    """Take this one job if it is claimable now, whatever is ahead of it in the queue."""
    return _claim_job(), _claim_params(worker, token, now, lease_s, timeout_s) | {"p_job": job_id}


def _fenced():
    return update(J).where(J.c.id == _p("job"), J.c.lease_token == _p("token"), J.c.state == RUNNING)


@cache
def _extend_lease():
    return _fenced().values(heartbeat_at=_p("now"), lease_expires_at=_p("lease_until"), updated_at=_p("now")).returning(
        J.c.cancel_requested
    )


def extend_lease(job_id: str, token: str, *, now: float, lease_s: float) -> Query:
    return _extend_lease(), {"p_job": job_id, "p_token": token, "p_now": now, "p_lease_until": now + lease_s}


@cache
def _report_progress():
    return (
        _fenced()
        .values(
            stage=_p("stage"),
            progress=_p("progress"),
            progress_detail=_p("detail"),
            heartbeat_at=_p("now"),
            lease_expires_at=_p("lease_until"),
            updated_at=_p("now"),
        )
        .returning(J.c.cancel_requested)
    )


def report_progress(
    job_id: str, token: str, *, now: float, lease_s: float, stage: str, progress: float, detail: str | None
) -> Query:
    params = {"p_job": job_id, "p_token": token, "p_now": now, "p_lease_until": now + lease_s}
    return _report_progress(), params | {"p_stage": stage, "p_progress": progress, "p_detail": detail}


_RELEASE = {"lease_token": None, "lease_owner": None, "lease_expires_at": None, "deadline_at": None}


@cache
def _complete():
    # Chat jobs then wait for delivery; CLI jobs have nobody to deliver to.
    delivery = case((J.c.platform == Platform.CLI.value, DeliveryState.NONE.value), else_=DeliveryState.PENDING.value)
    return (
        _fenced()
        .values(
            state=JobState.SUCCEEDED.value,
            result_json=_p("result"),
            finished_at=_p("now"),
            updated_at=_p("now"),
            progress=1.0,
            delivery_state=delivery,
            **_RELEASE,
        )
        .returning(J.c.id)
    )


def complete(job_id: str, token: str, *, now: float, result_json: str) -> Query:
    return _complete(), {"p_job": job_id, "p_token": token, "p_now": now, "p_result": result_json}


@cache
def _fail():
    next_state = case(
        (J.c.cancel_requested.is_(True), JobState.CANCELLED.value),
        (and_(_p("retry"), J.c.attempts < J.c.max_attempts), QUEUED),
        else_=JobState.FAILED.value,
    )
    return (
        _fenced()
        .values(
            state=next_state,
            run_after=_p("run_after"),
            finished_at=case((next_state == QUEUED, None), else_=_p("now")),
            error_user=_p("error_user"),
            error_admin=_p("error_admin"),
            updated_at=_p("now"),
            **_RELEASE,
        )
        .returning(J.c.state)
    )


def fail(
    job_id: str, token: str, *, now: float, retry: bool, run_after: float, error_user: str, error_admin: str
) -> Query:
    """Retry later (queued), or give up (failed); a job whose owner asked to cancel ends cancelled."""
    params = {"p_job": job_id, "p_token": token, "p_now": now, "p_retry": retry, "p_run_after": run_after}
    return _fail(), params | {"p_error_user": error_user, "p_error_admin": error_admin}


@cache
def _requeue_for_shutdown():
    return (
        _fenced()
        .values(
            state=QUEUED,
            attempts=J.c.attempts - 1,
            shutdown_requeues=J.c.shutdown_requeues + 1,
            run_after=_p("now"),
            stage=None,
            updated_at=_p("now"),
            **_RELEASE,
        )
        .returning(J.c.id)
    )


def requeue_for_shutdown(job_id: str, token: str, *, now: float) -> Query:
    """Give the job back without charging the attempt the claim counted."""
    return _requeue_for_shutdown(), {"p_job": job_id, "p_token": token, "p_now": now}


@cache
def _finish_cancelled():
    return (
        _fenced()
        .values(state=JobState.CANCELLED.value, finished_at=_p("now"), updated_at=_p("now"), **_RELEASE)
        .returning(J.c.id)
    )


def finish_cancelled(job_id: str, token: str, *, now: float) -> Query:
    return _finish_cancelled(), {"p_job": job_id, "p_token": token, "p_now": now}


# ---- owners and operators ---------------------------------------------------------------------------


@cache
def _cancel(owned: bool):
    stmt = update(J).where(J.c.id == _p("job"), J.c.state.in_([QUEUED, RUNNING]))
    if owned:
        stmt = stmt.where(J.c.owner_key == _p("owner"))
    was_queued = J.c.state == QUEUED
    return stmt.values(
        state=case((was_queued, JobState.CANCELLED.value), else_=J.c.state),
        cancel_requested=case((was_queued, J.c.cancel_requested), else_=True),
        finished_at=case((was_queued, _p("now")), else_=J.c.finished_at),
        updated_at=_p("now"),
    ).returning(J.c.state, J.c.cancel_requested)


def cancel(job_id: str, *, now: float, owner_key: str | None) -> Query:
    """Queued → cancelled at once; running → cancel requested (the worker observes it at a step boundary)."""
    params = {"p_job": job_id, "p_now": now}
    if owner_key is None:
        return _cancel(False), params
    return _cancel(True), params | {"p_owner": owner_key}


@cache
def _retry(states: tuple[str, ...]):
    return (
        update(J)
        .where(J.c.id == _p("job"), J.c.state.in_(states))
        .values(
            state=QUEUED,
            attempts=0,
            run_after=_p("now"),
            cancel_requested=False,
            finished_at=None,
            stage=None,
            progress=0.0,
            progress_detail=None,
            result_json=None,
            delivery_state=DeliveryState.NONE.value,
            updated_at=_p("now"),
        )
        .returning(J.c.id)
    )


def retry(job_id: str, *, now: float, states: tuple[str, ...]) -> Query:
    return _retry(states), {"p_job": job_id, "p_now": now}


@cache
def _reap_expired():
    next_state = case(
        (J.c.cancel_requested.is_(True), JobState.CANCELLED.value),
        (J.c.attempts >= J.c.max_attempts, JobState.DEAD.value),
        else_=QUEUED,
    )
    timed_out = J.c.deadline_at < _p("now")
    return (
        update(J)
        .where(J.c.state == RUNNING, or_(J.c.lease_expires_at < _p("now"), timed_out))
        .values(
            state=next_state,
            run_after=_p("run_after"),
            finished_at=case((next_state == QUEUED, None), else_=_p("now")),
            error_user="The render stopped unexpectedly.",
            error_admin=case((timed_out, "job timeout"), else_="lease expired"),
            updated_at=_p("now"),
            **_RELEASE,
        )
        .returning(J.c.id, J.c.state, J.c.error_admin)
    )


def reap_expired(*, now: float, run_after: float) -> Query:
    """Leases that ran out (or jobs past their hard deadline) go back to the queue, or to `dead`."""
    return _reap_expired(), {"p_now": now, "p_run_after": run_after}


# ---- delivery ---------------------------------------------------------------------------------------


@cache
def _claim_delivery():
    next_id = (
        select(J.c.id)
        .where(
            J.c.platform == _p("platform"),
            J.c.state == JobState.SUCCEEDED.value,
            or_(
                J.c.delivery_state == DeliveryState.PENDING.value,
                and_(J.c.delivery_state == DeliveryState.DELIVERING.value, J.c.delivery_expires_at < _p("now")),
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
            delivery_token=_p("token"),
            delivery_expires_at=_p("lease_until"),
            delivery_attempts=J.c.delivery_attempts + 1,
            updated_at=_p("now"),
        )
        .returning(*J.c)
    )


def claim_delivery(*, platform: str, token: str, now: float, lease_s: float) -> Query:
    """Take one finished job to post back; an expired `delivering` claim is taken over (and flagged)."""
    return _claim_delivery(), {"p_platform": platform, "p_token": token, "p_now": now, "p_lease_until": now + lease_s}


def _delivery_fenced():
    return update(J).where(
        J.c.id == _p("job"), J.c.delivery_token == _p("token"), J.c.delivery_state == DeliveryState.DELIVERING.value
    )


@cache
def _mark_delivered():
    return (
        _delivery_fenced()
        .values(
            delivery_state=DeliveryState.DELIVERED.value,
            delivered_message_id=_p("message"),
            delivered_at=_p("now"),
            delivery_token=None,
            delivery_expires_at=None,
            updated_at=_p("now"),
        )
        .returning(J.c.id)
    )


def mark_delivered(job_id: str, token: str, *, now: float, message_id: str) -> Query:
    return _mark_delivered(), {"p_job": job_id, "p_token": token, "p_now": now, "p_message": message_id}


@cache
def _mark_delivery_failed(retry: bool):
    state = DeliveryState.PENDING if retry else DeliveryState.FAILED
    return (
        _delivery_fenced()
        .values(
            delivery_state=state.value,
            delivery_token=None,
            delivery_expires_at=None,
            error_admin=_p("error_admin"),
            updated_at=_p("now"),
        )
        .returning(J.c.id)
    )


def mark_delivery_failed(job_id: str, token: str, *, now: float, retry: bool, error_admin: str) -> Query:
    params = {"p_job": job_id, "p_token": token, "p_now": now, "p_error_admin": error_admin}
    return _mark_delivery_failed(retry), params


# ---- retention --------------------------------------------------------------------------------------


def jobs_older_than(cutoff: float, states: tuple[str, ...]) -> Query:
    return select(J.c.id).where(J.c.state.in_(states), J.c.updated_at < cutoff), {}


def delete_jobs(job_ids: list[str]) -> Query:
    return delete(J).where(J.c.id.in_(job_ids)), {}
