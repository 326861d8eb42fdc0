"""Database tables (SQLAlchemy 2 ORM declarations, used as Core tables by `queries.py`).

Times are UTC epoch seconds as floats (one clock, comparable in SQL, no time-zone strings). Alembic
migrations in `storage/migrations` must produce exactly this metadata; a test diffs the two.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_key: Mapped[str] = mapped_column(String(80))
    platform: Mapped[str] = mapped_column(String(16))
    chat_id: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    spec_version: Mapped[int] = mapped_column(Integer)
    spec_json: Mapped[str] = mapped_column(Text)

    state: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # Fair ordering: how many of the owner's jobs were active when this one was submitted. Claiming by
    # (priority, fair_round, created_at) interleaves users round-robin without a join.
    fair_round: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    run_after: Mapped[float] = mapped_column(Double)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    max_attempts: Mapped[int] = mapped_column(Integer)
    shutdown_requeues: Mapped[int] = mapped_column(Integer, server_default=text("0"))

    stage: Mapped[str | None] = mapped_column(String(16))
    progress: Mapped[float] = mapped_column(Double, server_default=text("0"))
    progress_detail: Mapped[str | None] = mapped_column(String(64))

    lease_owner: Mapped[str | None] = mapped_column(String(120))
    lease_token: Mapped[str | None] = mapped_column(String(36))
    lease_expires_at: Mapped[float | None] = mapped_column(Double)
    deadline_at: Mapped[float | None] = mapped_column(Double)
    heartbeat_at: Mapped[float | None] = mapped_column(Double)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))

    created_at: Mapped[float] = mapped_column(Double)
    started_at: Mapped[float | None] = mapped_column(Double)
    finished_at: Mapped[float | None] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)

    error_user: Mapped[str | None] = mapped_column(Text)
    error_admin: Mapped[str | None] = mapped_column(Text)
    result_json: Mapped[str | None] = mapped_column(Text)

    status_message_id: Mapped[str | None] = mapped_column(String(64))
    delivery_state: Mapped[str] = mapped_column(String(16), server_default=text("'none'"))
    delivery_attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    delivery_token: Mapped[str | None] = mapped_column(String(36))
    delivery_expires_at: Mapped[float | None] = mapped_column(Double)
    delivered_message_id: Mapped[str | None] = mapped_column(String(64))
    delivered_at: Mapped[float | None] = mapped_column(Double)

    __table_args__ = (
        Index("ix_jobs_owner_state", "owner_key", "state"),
        Index("ix_jobs_delivery", "platform", "delivery_state"),
        Index("ix_jobs_state_lease", "state", "lease_expires_at"),
    )


# The claim's ORDER BY, column for column (priority descending), so a deep queue is never sorted.
Index("ix_jobs_claim_order", Job.state, Job.priority.desc(), Job.fair_round, Job.created_at, Job.id)


class JobEvent(Base):
    """Append-only history of a job: one row per transition, never updated."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[float] = mapped_column(Double)
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str | None] = mapped_column(String(120))
    detail: Mapped[str | None] = mapped_column(Text)


class JobMedia(Base):
    """A file of a job under `<media>/<job id>/`; the row is written after the file is on disk."""

    __tablename__ = "job_media"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(36), index=True)
    role: Mapped[str] = mapped_column(String(32))
    rel_path: Mapped[str] = mapped_column(String(200))
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Double)

    __table_args__ = (UniqueConstraint("job_id", "role"),)


class User(Base):
    """Per-user policy: blocked, quota override, consent, and the cooldown clock."""

    __tablename__ = "users"

    owner_key: Mapped[str] = mapped_column(String(80), primary_key=True)
    blocked: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    max_active: Mapped[int | None] = mapped_column(Integer)
    consent_at: Mapped[float | None] = mapped_column(Double)
    last_submit_at: Mapped[float | None] = mapped_column(Double)
    created_at: Mapped[float] = mapped_column(Double)
    note: Mapped[str | None] = mapped_column(String(200))


class Worker(Base):
    """One engine process group (rank 0 writes it); operators see it in `duet queue workers`."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(120), primary_key=True)
    host: Mapped[str] = mapped_column(String(120))
    pid: Mapped[int] = mapped_column(Integer)
    world_size: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    state: Mapped[str] = mapped_column(String(16))
    current_job_id: Mapped[str | None] = mapped_column(String(36))
    drain_requested: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    started_at: Mapped[float] = mapped_column(Double)
    heartbeat_at: Mapped[float] = mapped_column(Double)
    info_json: Mapped[str | None] = mapped_column(Text)


class QueueControl(Base):
    """A single row (id = 1): pause switches, separately for intake and for claiming."""

    __tablename__ = "queue_control"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    intake_paused: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    claims_paused: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    reason: Mapped[str | None] = mapped_column(String(200))
    updated_at: Mapped[float] = mapped_column(Double)
