"""Schema upgrades through Alembic, on Duet's own engines (so SQLite gets its PRAGMAs and BEGIN IMMEDIATE).

Every program calls `upgrade(db)` at start: it is idempotent, and two programs starting together are
serialised by the write transaction it runs in.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import select
from sqlalchemy.engine import Connection

from storage.db import Database

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


async def upgrade(db: Database, revision: str = "head") -> None:
    async with db.writer.begin() as conn:
        await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), revision))


async def current_revision(db: Database) -> str | None:
    from alembic.runtime.migration import MigrationContext

    async with db.reader.connect() as conn:
        return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())


async def ensure_control_row(db: Database, now: float) -> None:
    """The single `queue_control` row exists after the first upgrade; this keeps older databases right too."""
    from sqlalchemy import insert

    from storage.tables import QueueControl

    async def unit(conn) -> None:
        if await conn.scalar(select(QueueControl.id).where(QueueControl.id == 1)) is None:
            await conn.execute(insert(QueueControl).values(id=1, intake_paused=False, claims_paused=False, updated_at=now))

    await db.write(unit)
