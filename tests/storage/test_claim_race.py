"""Many processes claiming from one queue: every job is claimed exactly once, with no lock errors.

The negative control runs the same harness with the classic broken claim (SELECT, then an unguarded
UPDATE, in pysqlite's default legacy transaction mode) and must see duplicates: proof the harness has teeth.
"""

from __future__ import annotations

import asyncio
import collections
import multiprocessing as mp

import pytest
from queue_helpers import make_spec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from storage.db import Database
from storage.queue import JobQueue
from storage.settings import QueueSettings

PROCESSES, COROUTINES, JOBS = 8, 2, 300
SETTINGS = QueueSettings(max_queued=10_000, max_active_per_user=10_000)


async def _claim_all(url: str, tag: str) -> tuple[list[str], dict[str, int]]:
    database = Database(url)
    queue = JobQueue(database, SETTINGS)
    claimed: list[str] = []
    errors: collections.Counter[str] = collections.Counter()

    async def claimer(k: int) -> None:
        while True:
            try:
                job = await queue.claim(f"{tag}-{k}")
            except Exception as exc:  # counted, never hidden: the test asserts there are none
                errors[type(exc).__name__] += 1
                await asyncio.sleep(0.005)
                continue
            if job is None:
                return
            claimed.append(job.id)

    await asyncio.gather(*(claimer(k) for k in range(COROUTINES)))
    await database.dispose()
    return claimed, dict(errors)


async def _naive_claim_all(url: str, tag: str) -> tuple[list[str], dict[str, int]]:
    engine = create_async_engine(url)  # no Duet hooks: pysqlite's legacy (deferred, implicit) transactions
    claimed: list[str] = []
    errors: collections.Counter[str] = collections.Counter()

    async def claimer() -> None:
        while True:
            try:
                async with engine.begin() as conn:
                    row = (
                        await conn.execute(text("SELECT id FROM jobs WHERE state='queued' ORDER BY created_at LIMIT 1"))
                    ).first()
                    if row is None:
                        return
                    await asyncio.sleep(0.001)
                    await conn.execute(text("UPDATE jobs SET state='running' WHERE id=:i"), {"i": row.id})
                    claimed.append(row.id)
            except Exception as exc:
                errors[type(exc).__name__] += 1
                await asyncio.sleep(0.005)

    await asyncio.gather(*(claimer() for _ in range(COROUTINES)))
    await engine.dispose()
    return claimed, dict(errors)


def _process_main(url: str, index: int, naive: bool, results) -> None:
    harness = _naive_claim_all if naive else _claim_all
    results.put(asyncio.run(harness(url, f"p{index}")))


def run_race(url: str, *, naive: bool = False) -> tuple[list[str], dict[str, int]]:
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_process_main, args=(url, i, naive, results)) for i in range(PROCESSES)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=240) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    claims = [job for claimed, _ in outcomes for job in claimed]
    errors: collections.Counter[str] = collections.Counter()
    for _, errs in outcomes:
        errors.update(errs)
    return claims, dict(errors)


async def _fill(queue: JobQueue) -> set[str]:
    return {(await queue.submit(make_spec(f"user{i % 37}", seed=i))).job_id for i in range(JOBS)}


@pytest.mark.slow
async def test_concurrent_claimers_claim_every_job_exactly_once(db_url, db, clock):
    submitted = await _fill(JobQueue(db, SETTINGS))
    claims, errors = await asyncio.to_thread(run_race, db_url)
    assert errors == {}
    duplicates = [job for job, n in collections.Counter(claims).items() if n > 1]
    assert duplicates == []
    assert set(claims) == submitted and len(claims) == JOBS
    async with db.read() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM jobs WHERE state='queued'")) == 0
        assert await conn.scalar(text("SELECT max(attempts) FROM jobs")) == 1


@pytest.mark.slow
async def test_negative_control_select_then_update_is_caught(tmp_path, clock):
    url = f"sqlite+aiosqlite:///{tmp_path / 'naive.db'}"
    database = Database(url)
    from storage.migrate import upgrade

    await upgrade(database)
    await _fill(JobQueue(database, SETTINGS))
    await database.dispose()
    claims, _errors = await asyncio.to_thread(run_race, url, naive=True)
    duplicates = [job for job, n in collections.Counter(claims).items() if n > 1]
    assert duplicates, "the harness failed to catch a racy claim"
