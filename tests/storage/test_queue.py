"""The queue's verbs and the promises they keep, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio

import pytest
from queue_helpers import make_spec, owner
from sqlalchemy import select, text, update

from storage.contract import JobResult, JobState, MediaRef
from storage.db import Database
from storage.errors import InvalidTransition, JobNotFound, LeaseLost, SubmitRefused
from storage.queue import JobQueue
from storage.tables import Job

RESULT = JobResult(
    video=MediaRef(role="result", size_bytes=1000, sha256="a" * 64), duration_s=3.2, width=960, height=960
)


async def test_submit_claim_complete_records_result_once(queue):
    submitted = await queue.submit(make_spec("alice", key="tg:1"))
    assert submitted.created
    job = await queue.claim("w1")
    assert job.id == submitted.job_id and job.state == "running" and job.attempts == 1
    await queue.progress(job.id, job.lease_token, "render", 0.5, "20/40")
    await queue.complete(job.id, job.lease_token, RESULT)
    with pytest.raises(LeaseLost):
        await queue.complete(job.id, job.lease_token, RESULT)
    done = await queue.get(job.id)
    assert done.state == "succeeded" and done.result == RESULT and done.lease_token is None
    assert done.delivery_state == "pending"
    kinds = [event.kind for event in await queue.events(job.id)]
    assert kinds == ["submitted", "claimed", "succeeded"]


async def test_claim_returns_none_when_empty(queue):
    assert await queue.claim("w1") is None


async def test_same_idempotency_key_ten_times_concurrently_makes_one_job(db_url, db, queue_settings, clock):
    # Ten separate engines (as ten bot processes would have), all submitting at once.
    databases = [Database(db_url) for _ in range(10)]
    try:
        queues = [JobQueue(database, queue_settings, clock=clock) for database in databases]
        results = await asyncio.gather(*(q.submit(make_spec("bob", key="discord:interaction:77")) for q in queues))
    finally:
        for database in databases:
            await database.dispose()
    assert len({r.job_id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    async with db.read() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM jobs")) == 1


async def test_fair_ordering_lets_a_later_user_in_early(queue):
    a_jobs = [(await queue.submit(make_spec("a", seed=i))).job_id for i in range(5)]
    b_job = (await queue.submit(make_spec("b"))).job_id
    first_two = [(await queue.claim("w1")).id, (await queue.claim("w2")).id]
    assert b_job in first_two
    assert a_jobs[0] in first_two


async def test_priority_wins_over_order(queue):
    await queue.submit(make_spec("a"))
    urgent = (await queue.submit(make_spec("b"), priority=5)).job_id
    assert (await queue.claim("w1")).id == urgent


async def test_per_user_limit_and_queue_cap_refuse_politely(queue, queue_settings):
    for i in range(queue_settings.max_active_per_user):
        await queue.submit(make_spec("greedy", seed=i))
    with pytest.raises(SubmitRefused) as refused:
        await queue.submit(make_spec("greedy", seed=99))
    assert refused.value.reason == "user_limit" and "limit" in refused.value.user_message


async def test_global_cap_under_concurrent_submits(db_url, db, clock):
    from storage.settings import QueueSettings

    settings = QueueSettings(max_queued=20, max_active_per_user=1)
    databases = [Database(db_url) for _ in range(8)]
    try:
        queues = [JobQueue(databases[i % 8], settings, clock=clock) for i in range(40)]
        outcomes = await asyncio.gather(
            *(q.submit(make_spec(f"user{i}")) for i, q in enumerate(queues)), return_exceptions=True
        )
    finally:
        for database in databases:
            await database.dispose()
    accepted = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, SubmitRefused)]
    assert len(accepted) == 20 and len(refused) == 20
    assert all(r.reason == "queue_full" for r in refused)
    async with db.read() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM jobs")) == 20


async def test_cooldown(db, clock):
    from storage.settings import QueueSettings

    queue = JobQueue(db, QueueSettings(submit_cooldown_s=30, max_active_per_user=5), clock=clock)
    await queue.submit(make_spec("c", seed=1))
    with pytest.raises(SubmitRefused) as refused:
        await queue.submit(make_spec("c", seed=2))
    assert refused.value.reason == "cooldown"
    clock.advance(31)
    await queue.submit(make_spec("c", seed=3))


async def test_expired_lease_is_requeued_with_the_attempt_counted(queue, clock, queue_settings):
    job_id = (await queue.submit(make_spec("a"))).job_id
    job = await queue.claim("w1")
    clock.advance(queue_settings.lease_s + 1)
    assert await queue.reap() == [(job_id, JobState.QUEUED)]
    again = await queue.get(job_id)
    assert again.state == "queued" and again.attempts == 1 and again.lease_token is None
    assert again.error_admin == "lease expired"
    with pytest.raises(LeaseLost):
        await queue.heartbeat(job_id, job.lease_token)
    with pytest.raises(LeaseLost):
        await queue.complete(job_id, job.lease_token, RESULT)
    assert (await queue.get(job_id)).state == "queued"


async def test_lease_expiry_by_moving_time_in_sql(queue, db):
    job_id = (await queue.submit(make_spec("a"))).job_id
    await queue.claim("w1")
    async with db.writer.begin() as conn:
        await conn.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=Job.lease_expires_at - 3600))
    assert await queue.reap() == [(job_id, JobState.QUEUED)]


async def test_heartbeat_keeps_the_lease(queue, clock, queue_settings):
    await queue.submit(make_spec("a"))
    job = await queue.claim("w1")
    for _ in range(5):
        clock.advance(queue_settings.lease_s * 0.8)
        assert await queue.heartbeat(job.id, job.lease_token) is False
    assert await queue.reap() == []


async def test_dead_after_max_attempts(queue, clock, queue_settings):
    job_id = (await queue.submit(make_spec("a"))).job_id
    for attempt in range(1, queue_settings.max_attempts + 1):
        clock.advance(queue_settings.retry_backoff_s + 1)
        job = await queue.claim("w1")
        assert job.id == job_id and job.attempts == attempt
        clock.advance(queue_settings.lease_s + 1)
        await queue.reap()
    final = await queue.get(job_id)
    assert final.state == "dead" and final.attempts == queue_settings.max_attempts
    clock.advance(10_000)
    assert await queue.claim("w1") is None


async def test_hard_deadline_reaps_a_job_that_keeps_heartbeating(queue, clock, queue_settings):
    job_id = (await queue.submit(make_spec("a"))).job_id
    job = await queue.claim("w1")
    elapsed = 0.0
    while elapsed <= queue_settings.job_timeout_s:
        clock.advance(queue_settings.lease_s / 2)
        elapsed += queue_settings.lease_s / 2
        await queue.heartbeat(job.id, job.lease_token)
    assert await queue.reap() == [(job_id, JobState.QUEUED)]
    assert (await queue.get(job_id)).error_admin == "job timeout"


async def test_fail_retries_with_backoff_then_fails(queue, clock):
    job_id = (await queue.submit(make_spec("a"))).job_id
    job = await queue.claim("w1")
    state = await queue.fail(job.id, job.lease_token, error_user="Oops", error_admin="boom", retryable=True)
    assert state == JobState.QUEUED
    assert await queue.claim("w1") is None  # backoff: not yet
    clock.advance(3600)
    job = await queue.claim("w1")
    state = await queue.fail(job.id, job.lease_token, error_user="Out of memory", error_admin="OOM", retryable=False)
    assert state == JobState.FAILED
    failed = await queue.get(job_id)
    assert failed.error_user == "Out of memory" and failed.finished_at is not None


async def test_shutdown_requeue_does_not_charge_an_attempt(queue):
    job_id = (await queue.submit(make_spec("a"))).job_id
    job = await queue.claim("w1")
    await queue.requeue(job.id, job.lease_token)
    requeued = await queue.get(job_id)
    assert requeued.state == "queued" and requeued.attempts == 0 and requeued.shutdown_requeues == 1
    assert (await queue.claim("w2")).attempts == 1


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("queued", JobState.CANCELLED),
        ("running", JobState.RUNNING),
        ("succeeded", None),
        ("failed", None),
        ("dead", None),
        ("cancelled", None),
    ],
)
async def test_cancel_over_every_state(queue, clock, setup, expected):
    job_id = (await queue.submit(make_spec("a"))).job_id
    if setup != "queued":
        job = await queue.claim("w1")
        if setup == "succeeded":
            await queue.complete(job_id, job.lease_token, RESULT)
        elif setup == "failed":
            await queue.fail(job_id, job.lease_token, error_user="x", error_admin="x", retryable=False)
        elif setup == "dead":
            async with queue.db.writer.begin() as conn:
                await conn.execute(update(Job).where(Job.id == job_id).values(max_attempts=1))
            clock.advance(10_000)
            await queue.reap()
        elif setup == "cancelled":
            await queue.cancel(job_id, actor=owner("a"))
            await queue.finish_cancelled(job_id, job.lease_token)
    before = await queue.get(job_id)
    if expected is None:
        with pytest.raises(InvalidTransition):
            await queue.cancel(job_id, actor=owner("a"))
        assert (await queue.get(job_id)).state == before.state
        return
    assert await queue.cancel(job_id, actor=owner("a")) == expected
    after = await queue.get(job_id)
    if setup == "running":
        assert after.cancel_requested
        assert await queue.heartbeat(job_id, after.lease_token) is True
        await queue.finish_cancelled(job_id, after.lease_token)
        assert (await queue.get(job_id)).state == "cancelled"
    else:
        assert after.state == "cancelled"


async def test_cancel_requested_job_that_fails_ends_cancelled_not_retried(queue):
    job_id = (await queue.submit(make_spec("a"))).job_id
    job = await queue.claim("w1")
    await queue.cancel(job_id, actor=owner("a"))
    state = await queue.fail(job_id, job.lease_token, error_user="x", error_admin="x", retryable=True)
    assert state == JobState.CANCELLED


async def test_a_user_cannot_see_or_cancel_another_users_job(queue):
    job_id = (await queue.submit(make_spec("alice"))).job_id
    with pytest.raises(JobNotFound):
        await queue.get(job_id, owner_key=owner("mallory"))
    with pytest.raises(JobNotFound):
        await queue.cancel(job_id, actor=owner("mallory"))
    with pytest.raises(JobNotFound):
        await queue.cancel("' OR 1=1 --", actor=owner("mallory"))
    assert (await queue.get(job_id)).state == "queued"
    assert await queue.cancel(job_id, actor="admin:root", is_admin=True) == JobState.CANCELLED


async def test_cancelling_a_queued_job_leaves_the_running_one_alone(queue):
    running = (await queue.submit(make_spec("b"))).job_id
    job = await queue.claim("w1")
    queued = (await queue.submit(make_spec("a"))).job_id
    await queue.cancel(queued, actor=owner("a"))
    assert not (await queue.get(running)).cancel_requested
    assert await queue.heartbeat(running, job.lease_token) is False


async def test_retry_brings_failed_and_dead_jobs_back(queue):
    job_id = (await queue.submit(make_spec("a"))).job_id
    with pytest.raises(InvalidTransition):
        await queue.retry(job_id)
    job = await queue.claim("w1")
    await queue.fail(job_id, job.lease_token, error_user="x", error_admin="x", retryable=False)
    await queue.retry(job_id)
    again = await queue.get(job_id)
    assert again.state == "queued" and again.attempts == 0
    with pytest.raises(JobNotFound):
        await queue.retry("no-such-job")


async def test_pause_intake_and_claims_separately(queue):
    await queue.submit(make_spec("a"))
    await queue.set_paused(intake=True)
    with pytest.raises(SubmitRefused) as refused:
        await queue.submit(make_spec("b"))
    assert refused.value.reason == "paused"
    await queue.set_paused(claims=True)
    assert await queue.claim("w1") is None
    await queue.set_paused(claims=False)
    assert await queue.claim("w1") is not None
    await queue.set_paused(intake=False)
    await queue.submit(make_spec("b"))
    assert await queue.paused() == {"intake": False, "claims": False}


async def test_delivery_is_claimed_once_and_marked_once(queue, clock):
    job_id = (await queue.submit(make_spec("a", platform="discord"))).job_id
    job = await queue.claim("w1")
    assert await queue.claim_delivery("discord") is None
    await queue.complete(job_id, job.lease_token, RESULT)
    assert await queue.claim_delivery("telegram") is None
    record, token = await queue.claim_delivery("discord")
    assert record.id == job_id and record.delivery_attempts == 1
    assert await queue.claim_delivery("discord") is None  # held by the first deliverer
    await queue.mark_delivered(job_id, token, "msg-1")
    with pytest.raises(LeaseLost):
        await queue.mark_delivered(job_id, token, "msg-2")
    delivered = await queue.get(job_id)
    assert delivered.delivery_state == "delivered" and delivered.delivered_message_id == "msg-1"
    clock.advance(10_000)
    assert await queue.claim_delivery("discord") is None


async def test_crashed_delivery_is_taken_over_and_flagged(queue, clock):
    job_id = (await queue.submit(make_spec("a", platform="discord"))).job_id
    job = await queue.claim("w1")
    await queue.complete(job_id, job.lease_token, RESULT)
    _, stale_token = await queue.claim_delivery("discord", lease_s=30)
    clock.advance(31)
    record, token = await queue.claim_delivery("discord", lease_s=30)
    assert record.delivery_attempts == 2  # the bot must check the platform before posting again
    with pytest.raises(LeaseLost):
        await queue.mark_delivered(job_id, stale_token, "late")
    await queue.mark_delivered(job_id, token, "msg-9")


async def test_cli_jobs_need_no_delivery(queue):
    job_id = (await queue.submit(make_spec("a", platform="cli"))).job_id
    job = await queue.claim("w1")
    await queue.complete(job_id, job.lease_token, RESULT)
    assert (await queue.get(job_id)).delivery_state == "none"


async def test_queue_position_follows_claim_order(queue, clock):
    ids = []
    for i in range(3):
        ids.append((await queue.submit(make_spec("a", seed=i))).job_id)
        clock.advance(1)
    b = (await queue.submit(make_spec("b"))).job_id
    assert [await queue.queue_position(i) for i in ids] == [1, 3, 4]
    assert await queue.queue_position(b) == 2
    claimed = [(await queue.claim("w1")).id for _ in range(4)]
    assert claimed == [ids[0], b, ids[1], ids[2]]
    job = await queue.get(ids[0])
    assert await queue.queue_position(job.id) is None


async def test_stored_spec_round_trips(queue):
    spec = make_spec("a", key="k1")
    job_id = (await queue.submit(spec)).job_id
    assert (await queue.get(job_id)).spec == spec
    async with queue.db.read() as conn:
        stored = await conn.scalar(select(Job.spec_version).where(Job.id == job_id))
    assert stored == 1
