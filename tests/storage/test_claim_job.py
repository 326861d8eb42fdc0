"""Claiming one named job (`JobQueue.claim(worker, job_id=...)`): what a one-shot engine started for a job uses, so
that it renders that job and never takes someone else's that is ahead of it in the queue."""

from __future__ import annotations

import asyncio

from queue_helpers import make_spec, owner

from storage.db import Database
from storage.queue import JobQueue

CLAIMERS, JOBS = 4, 8


async def test_claims_the_named_job_even_with_older_jobs_queued(queue, clock):
    older = []
    for i in range(2):
        older.append((await queue.submit(make_spec(f"early{i}"))).job_id)
        clock.advance(5)
    mine = (await queue.submit(make_spec("me"))).job_id
    clock.advance(1)

    record = await queue.claim("cli-engine", job_id=mine)

    assert record.id == mine and record.owner_key == owner("me")
    assert (record.state, record.attempts, record.lease_owner) == ("running", 1, "cli-engine")
    assert record.lease_token and record.lease_expires_at == clock.now + queue.settings.lease_s
    assert (record.started_at, record.deadline_at) == (clock.now, clock.now + queue.settings.job_timeout_s)
    assert [e.kind for e in await queue.events(mine)] == ["submitted", "claimed"]
    assert [(await queue.get(job_id)).state for job_id in older] == ["queued", "queued"]
    assert (await queue.claim("other")).id == older[0]  # the fair order is untouched


async def test_a_job_that_is_not_claimable_now_is_not_claimed(queue, clock):
    running = (await queue.submit(make_spec("a"))).job_id
    first = await queue.claim("w1", job_id=running)
    cancelled = (await queue.submit(make_spec("b"))).job_id
    await queue.cancel(cancelled, actor=owner("b"))
    failed = (await queue.submit(make_spec("c"))).job_id
    job = await queue.claim("w1", job_id=failed)
    await queue.fail(job.id, job.lease_token, error_user="x", error_admin="boom", retryable=False)

    for job_id in (running, cancelled, failed, "no-such-job"):
        assert await queue.claim("w2", job_id=job_id) is None
    record = await queue.get(running)
    assert (record.lease_token, record.attempts) == (first.lease_token, 1)  # the holder's lease is untouched
    assert (await queue.get(failed)).state == "failed"


async def test_a_queued_job_waits_for_its_retry_time_and_for_claims_to_resume(queue, clock):
    job_id = (await queue.submit(make_spec("a"))).job_id
    job = await queue.claim("w1", job_id=job_id)
    assert await queue.fail(job_id, job.lease_token, error_user="x", error_admin="hiccup") == "queued"
    assert await queue.claim("w1", job_id=job_id) is None  # backing off
    clock.advance(queue.settings.retry_backoff_max_s * 1.5)
    await queue.set_paused(claims=True)
    assert await queue.claim("w1", job_id=job_id) is None
    await queue.set_paused(claims=False)
    assert (await queue.claim("w1", job_id=job_id)).attempts == 2


async def test_concurrent_claimers_of_one_job_exactly_one_wins(db_url, db, queue_settings):
    """Several connections claim the same job at the same moment, job after job: one lease, one event each."""
    queue = JobQueue(db, queue_settings)
    job_ids = [(await queue.submit(make_spec(f"u{i}"))).job_id for i in range(JOBS)]
    claimers = [JobQueue(Database(db_url), queue_settings) for _ in range(CLAIMERS)]
    try:
        for job_id in job_ids:
            results = await asyncio.gather(*(c.claim(f"w{i}", job_id=job_id) for i, c in enumerate(claimers)))
            winners = [r for r in results if r is not None]
            assert len(winners) == 1
            record = await queue.get(job_id)
            assert (record.attempts, record.lease_token) == (1, winners[0].lease_token)
            assert [e.kind for e in await queue.events(job_id)].count("claimed") == 1
    finally:
        for claimer in claimers:
            await claimer.db.dispose()

