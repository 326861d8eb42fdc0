"""Alembic environment: runs on the connection `storage.migrate` hands in (async engines, run_sync)."""

from __future__ import annotations

from alembic import context

from storage.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `storage.migrate` (it supplies the connection)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
