"""Crashes and SQLite's sharp edges: kill -9 of a claim holder, PRAGMAs on every pooled connection, a
coroutine cancelled while waiting for the write lock, and migrations that build exactly the ORM schema."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from queue_helpers import make_spec
from sqlalchemy import text

from storage.contract import JobResult, MediaRef
from storage.db import Database
from storage.migrate import upgrade
from storage.queue import JobQueue
from storage.settings import QueueSettings
from storage.tables import Base

HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from storage.db import Database
    from storage.queue import JobQueue
    from storage.settings import QueueSettings

    async def main():
        queue = JobQueue(Database(sys.argv[1]), QueueSettings(lease_s=2.0))
        job = await queue.claim("doomed-worker")
        print(job.id, flush=True)
        await asyncio.sleep(3600)  # "rendering" until killed

    asyncio.run(main())
    """
)


async def test_kill_9_of_a_claim_holder_is_recovered_and_completed_once(db_url, db):
    real_time = JobQueue(db, QueueSettings(lease_s=2.0, retry_backoff_s=0.0))
    job_id = (await real_time.submit(make_spec("a"))).job_id
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, db_url], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        claimed = await asyncio.wait_for(asyncio.to_thread(holder.stdout.readline), timeout=60)
        assert claimed.strip() == job_id
        os.killpg(holder.pid, signal.SIGKILL)
        assert holder.wait(timeout=10) == -signal.SIGKILL
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
    assert (await real_time.get(job_id)).state == "running"

    later = JobQueue(db, QueueSettings(lease_s=2.0, retry_backoff_s=0.0), clock=lambda: time.time() + 5)
    assert [job for job, _ in await later.reap()] == [job_id]
    job = await later.claim("survivor")
    assert job.id == job_id and job.attempts == 2
    result = JobResult(video=MediaRef(role="result", size_bytes=1, sha256="c" * 64), duration_s=1, width=8, height=8)
    await later.complete(job.id, job.lease_token, result)
    events = [e.kind for e in await later.events(job_id)]
    assert events.count("succeeded") == 1 and events.count("claimed") == 2 and "reaped" in events


async def test_pragmas_on_every_pooled_connection(tmp_path):
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}", busy_timeout_ms=31_000)
    try:
        for engine in (database.writer, database.reader):
            connections = [await engine.connect() for _ in range(engine.pool.size())]
            try:
                for conn in connections:
                    pragmas = {
                        name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
                        for name in ("journal_mode", "busy_timeout", "synchronous", "foreign_keys")
                    }
                    assert pragmas == {"journal_mode": "wal", "busy_timeout": 31_000, "synchronous": 2, "foreign_keys": 1}
            finally:
                for conn in connections:
                    await conn.close()
    finally:
        await database.dispose()


async def test_write_transactions_begin_immediate(tmp_path):
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'b.db'}")
    await upgrade(database)
    statements: list[str] = []
    from sqlalchemy import event

    event.listen(database.writer.sync_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    queue = JobQueue(database)
    await queue.submit(make_spec("a"))
    await queue.claim("w")
    await database.dispose()
    begins = [s for s in statements if s.startswith("BEGIN")]
    assert begins and all(s == "BEGIN IMMEDIATE" for s in begins)


async def test_cancelled_while_waiting_for_the_write_lock_leaves_no_lock(tmp_path):
    path = tmp_path / "lock.db"
    database = Database(f"sqlite+aiosqlite:///{path}", busy_timeout_ms=5_000)
    await upgrade(database)
    queue = JobQueue(database)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    task = asyncio.create_task(queue.submit(make_spec("a")))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    holder.execute("COMMIT")
    holder.close()
    await asyncio.sleep(0.5)

    def other_process_write() -> None:
        other = sqlite3.connect(path, timeout=1)
        other.execute("INSERT INTO users (owner_key, blocked, created_at) VALUES ('x', 0, 0)")
        other.commit()
        other.close()

    await asyncio.to_thread(other_process_write)
    assert database.writer.pool.checkedout() == 0
    await database.dispose()


async def test_migrations_build_exactly_the_orm_schema(db_url, db):
    async with db.reader.connect() as conn:
        diff = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata))
        control = (await conn.execute(text("SELECT id, intake_paused, claims_paused FROM queue_control"))).all()
    assert diff == []
    assert [tuple(row) for row in control] == [(1, False, False)]


async def test_upgrade_is_idempotent(db):
    await upgrade(db)
    await upgrade(db)
    async with db.reader.connect() as conn:
        assert (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar() == "0001"
