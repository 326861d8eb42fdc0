"""Database engines: SQLite (one host, the default) and PostgreSQL (several hosts), set up safely.

SQLite is only safe for a queue when every write transaction starts with `BEGIN IMMEDIATE` (a deferred
transaction that upgrades from read to write fails at once with SQLITE_BUSY_SNAPSHOT, whatever the
busy_timeout) and every pooled connection carries the PRAGMAs: WAL, busy_timeout, synchronous=FULL,
foreign_keys. Read-only work goes through a second engine with plain `BEGIN`, so status queries never take
the write lock. See ../shared/reference/queue-reliability.md §(c).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

log = logging.getLogger(__name__)
T = TypeVar("T")


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_file(url: str) -> Path | None:
    database = make_url(url).database
    return Path(database) if database and database != ":memory:" else None


def _install_sqlite_hooks(engine: AsyncEngine, *, busy_timeout_ms: int, write: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        # Stop pysqlite's implicit, deferred BEGIN: we emit our own in the "begin" hook below.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA journal_mode")
        if cursor.fetchone()[0].lower() != "wal":
            cursor.execute("PRAGMA journal_mode=WAL")  # persistent in the file; set once
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    begin = "BEGIN IMMEDIATE" if write else "BEGIN"

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn) -> None:
        conn.exec_driver_sql(begin)


def create_engine(url: str, *, busy_timeout_ms: int = 30_000, write: bool = True, pool_size: int = 5) -> AsyncEngine:
    """An async engine for `url` with Duet's connection rules applied."""
    if is_sqlite(url):
        path = _sqlite_file(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url,
            connect_args={"timeout": busy_timeout_ms / 1000},
            pool_size=pool_size,
            max_overflow=0 if write else 5,
        )
        _install_sqlite_hooks(engine, busy_timeout_ms=busy_timeout_ms, write=write)
        return engine
    return create_async_engine(url, pool_size=pool_size, max_overflow=5, pool_pre_ping=True)


def _is_lock_error(exc: BaseException) -> bool:
    return isinstance(exc, OperationalError) and "locked" in str(exc.orig).lower()


class Database:
    """The write engine, the read engine, and the rules for using them.

    `write(unit)` runs one short transaction: shielded, so that a caller cancelled while waiting for the
    SQLite write lock cannot leave an orphaned `BEGIN IMMEDIATE` behind (the transaction completes or rolls
    back in its own task); serialised per process on SQLite, because pooled connections of one process only
    fight each other for the single write lock; retried a few times when the lock could not be had.
    """

    def __init__(self, url: str, *, busy_timeout_ms: int = 30_000) -> None:
        self.url = url
        self.is_sqlite = is_sqlite(url)
        self.writer = create_engine(url, busy_timeout_ms=busy_timeout_ms, write=True, pool_size=1 if self.is_sqlite else 5)
        self.reader = (
            create_engine(url, busy_timeout_ms=busy_timeout_ms, write=False, pool_size=3) if self.is_sqlite else self.writer
        )
        self._write_lock = asyncio.Lock() if self.is_sqlite else None

    async def write(self, unit: Callable[[AsyncConnection], Awaitable[T]], *, retries: int = 3) -> T:
        return await asyncio.shield(self._write(unit, retries))

    async def _write(self, unit: Callable[[AsyncConnection], Awaitable[T]], retries: int) -> T:
        lock = self._write_lock or contextlib.nullcontext()
        for attempt in range(retries + 1):
            try:
                async with lock, self.writer.begin() as conn:
                    return await unit(conn)
            except OperationalError as exc:
                if not _is_lock_error(exc) or attempt == retries:
                    raise
                log.warning("database locked, retrying", extra={"action": "db_retry", "attempt": attempt + 1})
                await asyncio.sleep(random.uniform(0.05, 0.2))
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.reader.connect() as conn:
            yield conn

    async def dispose(self) -> None:
        await self.writer.dispose()
        if self.reader is not self.writer:
            await self.reader.dispose()
