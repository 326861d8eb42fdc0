"""One storage suite, two backends: every test that takes `db_url` runs on SQLite and on PostgreSQL.

PostgreSQL comes from $DUET_TEST_PG_URL (`.ci/run` starts a server on 127.0.0.1 and sets it). In CI its
absence is an error, never a skip; on a developer machine without it the PostgreSQL half is skipped.
"""

from __future__ import annotations

import asyncio
import os

import asyncpg
import pytest
from queue_helpers import FakeClock, pg_base_url, unique_name
from sqlalchemy.engine import make_url

from storage.db import Database
from storage.migrate import upgrade
from storage.queue import JobQueue
from storage.settings import QueueSettings


async def _admin_execute(base: str, sql: str) -> None:
    url = make_url(base)
    admin = await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password, database=url.database
    )
    try:
        await admin.execute(sql)
    finally:
        await admin.close()


async def _create_pg_database(base: str) -> tuple[str, str]:
    """A fresh database per test (the suite's tests and processes never share state)."""
    name = unique_name("duet_t")
    await _admin_execute(base, f'CREATE DATABASE "{name}"')
    return make_url(base).set(database=name).render_as_string(hide_password=False), name


async def _drop_pg_database(base: str, name: str) -> None:
    # FORCE cannot end a backend of another role (an autovacuum worker that just started on the new database):
    # wait for it briefly; a database left behind in a throwaway CI cluster is harmless.
    for _ in range(20):
        try:
            await _admin_execute(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except (asyncpg.InsufficientPrivilegeError, asyncpg.ObjectInUseError):
            await asyncio.sleep(0.25)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'duet.db'}"
        return
    base = pg_base_url()
    if base is None:
        if os.environ.get("CI"):
            pytest.fail("DUET_TEST_PG_URL is not set: CI must run the PostgreSQL half of the storage suite")
        pytest.skip("PostgreSQL not configured (set DUET_TEST_PG_URL)")
    url, name = asyncio.run(_create_pg_database(base))
    yield url
    asyncio.run(_drop_pg_database(base, name))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue_settings() -> QueueSettings:
    return QueueSettings(max_queued=50, max_active_per_user=5, lease_s=60.0, job_timeout_s=3600.0, max_attempts=3)


@pytest.fixture
async def db(db_url):
    database = Database(db_url)
    await upgrade(database)
    yield database
    await database.dispose()


@pytest.fixture
async def queue(db, queue_settings, clock) -> JobQueue:
    return JobQueue(db, queue_settings, clock=clock)
