"""A Hypothesis state machine drives the real queue through random interleavings and checks the invariants
after every step: at most one live lease per job, only running jobs hold leases, attempts never exceed
the maximum, delivered implies succeeded, per-user quotas hold, and stale-token writes change nothing.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from queue_helpers import FakeClock, make_spec, owner
from sqlalchemy import select

from storage.contract import JobResult, MediaRef
from storage.db import Database
from storage.errors import InvalidTransition, JobNotFound, LeaseLost, SubmitRefused
from storage.migrate import upgrade
from storage.queue import JobQueue
from storage.settings import QueueSettings
from storage.tables import Job

USERS = ("u0", "u1", "u2")
WORKERS = ("w0", "w1", "w2")
SETTINGS = QueueSettings(max_queued=12, max_active_per_user=3, lease_s=60, job_timeout_s=600, max_attempts=3)
RESULT = JobResult(video=MediaRef(role="result", size_bytes=1, sha256="b" * 64), duration_s=1, width=64, height=64)


def make_machine(url_factory):
    class QueueMachine(RuleBasedStateMachine):
        @initialize()
        def setup(self) -> None:
            self.loop = asyncio.new_event_loop()
            self.url, self.cleanup = url_factory()
            self.db = Database(self.url)
            self.run(upgrade(self.db))
            self.clock = FakeClock()
            self.queue = JobQueue(self.db, SETTINGS, clock=self.clock)
            self.held: dict[str, tuple[str, str]] = {}  # worker -> (job id, token)
            self.old_tokens: list[tuple[str, str]] = []
            self.jobs: list[str] = []
            self.seq = 0

        def teardown(self) -> None:
            if hasattr(self, "db"):
                self.run(self.db.dispose())
                self.loop.close()
                self.cleanup()

        def run(self, coro):
            return self.loop.run_until_complete(coro)

        def rows(self) -> list:
            async def read():
                async with self.db.read() as conn:
                    return (await conn.execute(select(Job.__table__).order_by(Job.id))).all()

            return self.run(read())

        @rule(user=st.sampled_from(USERS))
        def submit(self, user: str) -> None:
            self.seq += 1
            try:
                self.jobs.append(self.run(self.queue.submit(make_spec(user, seed=self.seq))).job_id)
            except SubmitRefused:
                pass

        @rule(worker=st.sampled_from(WORKERS))
        def claim(self, worker: str) -> None:
            if worker in self.held:
                return
            job = self.run(self.queue.claim(worker))
            if job is not None:
                assert job.attempts <= job.max_attempts
                self.held[worker] = (job.id, job.lease_token)

        def _worker_call(self, worker: str, call) -> None:
            job_id, token = self.held[worker]
            try:
                self.run(call(job_id, token))
            except LeaseLost:
                del self.held[worker]
                self.old_tokens.append((job_id, token))

        @precondition(lambda self: self.held)
        @rule(data=st.data())
        def heartbeat(self, data) -> None:
            worker = data.draw(st.sampled_from(sorted(self.held)))
            self._worker_call(worker, self.queue.heartbeat)

        @precondition(lambda self: self.held)
        @rule(data=st.data())
        def complete(self, data) -> None:
            worker = data.draw(st.sampled_from(sorted(self.held)))
            self._worker_call(worker, lambda j, t: self.queue.complete(j, t, RESULT))
            if worker in self.held:
                self.old_tokens.append(self.held.pop(worker))

        @precondition(lambda self: self.held)
        @rule(data=st.data(), retryable=st.booleans())
        def fail(self, data, retryable: bool) -> None:
            worker = data.draw(st.sampled_from(sorted(self.held)))
            self._worker_call(
                worker, lambda j, t: self.queue.fail(j, t, error_user="x", error_admin="x", retryable=retryable)
            )
            if worker in self.held:
                self.old_tokens.append(self.held.pop(worker))

        @precondition(lambda self: self.held)
        @rule(data=st.data())
        def crash(self, data) -> None:
            worker = data.draw(st.sampled_from(sorted(self.held)))
            self.old_tokens.append(self.held.pop(worker))

        @precondition(lambda self: self.old_tokens)
        @rule(data=st.data())
        def stale_write(self, data) -> None:
            job_id, token = data.draw(st.sampled_from(self.old_tokens))
            before = self.rows()
            if any(row.id == job_id and row.lease_token == token for row in before):
                return  # a crashed worker's lease that has not expired yet is not stale
            for call in (
                lambda: self.queue.heartbeat(job_id, token),
                lambda: self.queue.complete(job_id, token, RESULT),
                lambda: self.queue.fail(job_id, token, error_user="x", error_admin="x"),
            ):
                with pytest.raises(LeaseLost):
                    self.run(call())
            assert self.rows() == before

        @rule(seconds=st.sampled_from([1, 30, 61, 200, 700]))
        def advance_clock(self, seconds: int) -> None:
            self.clock.advance(seconds)

        @rule()
        def reap(self) -> None:
            self.run(self.queue.reap())

        @precondition(lambda self: self.jobs)
        @rule(data=st.data(), user=st.sampled_from(USERS))
        def cancel(self, data, user: str) -> None:
            job_id = data.draw(st.sampled_from(self.jobs))
            try:
                self.run(self.queue.cancel(job_id, actor=owner(user)))
            except (JobNotFound, InvalidTransition):
                pass

        @rule()
        def deliver(self) -> None:
            claimed = self.run(self.queue.claim_delivery("telegram"))
            if claimed is not None:
                record, token = claimed
                assert record.state == "succeeded"
                self.run(self.queue.mark_delivered(record.id, token, "m1"))

        @invariant()
        def leases_and_states_agree(self) -> None:
            if not hasattr(self, "db"):
                return
            rows = self.rows()
            for row in rows:
                assert (row.state == "running") == (row.lease_token is not None), row
                assert row.attempts <= row.max_attempts
                if row.delivery_state == "delivered":
                    assert row.state == "succeeded"
            for user in USERS:
                active = [r for r in rows if r.owner_key == owner(user) and r.state in ("queued", "running")]
                assert len(active) <= SETTINGS.max_active_per_user
            tokens = {(r.id, r.lease_token) for r in rows if r.lease_token}
            live = [held for held in self.held.values() if held in tokens]
            assert len({job for job, _ in live}) == len(live), "two workers hold live leases on one job"

    return QueueMachine


def test_queue_state_machine(db_url, tmp_path):
    counter = iter(range(10_000))

    if db_url.startswith("sqlite"):

        def url_factory():
            return f"sqlite+aiosqlite:///{tmp_path / f'sm{next(counter)}.db'}", lambda: None
    else:
        from conftest import _create_pg_database, _drop_pg_database
        from queue_helpers import pg_base_url

        base = pg_base_url()

        def url_factory():
            loop = asyncio.new_event_loop()
            url, name = loop.run_until_complete(_create_pg_database(base))
            loop.close()

            def cleanup():
                inner = asyncio.new_event_loop()
                inner.run_until_complete(_drop_pg_database(base, name))
                inner.close()

            return url, cleanup

    machine = make_machine(url_factory)
    machine.TestCase.settings = settings(
        max_examples=20,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    machine.TestCase().runTest()
