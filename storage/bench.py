"""Queue benchmark (a script, not a test): submit latency with a deep queue, claim→complete throughput.

    python -m storage.bench                                   # SQLite in a temporary directory
    python -m storage.bench --url postgresql+asyncpg://…/db   # an empty PostgreSQL database

Targets on SQLite: submit p99 < 50 ms with 10,000 jobs queued, ≥ 200 claims/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import insert, text

from storage.contract import Inputs, JobResult, JobSpec, Line, MediaRef, Requester
from storage.db import Database
from storage.migrate import upgrade
from storage.queue import JobQueue
from storage.settings import QueueSettings
from storage.tables import Job

DIGEST = "0" * 64


def _spec(user: str) -> JobSpec:
    return JobSpec(
        requester=Requester(platform="telegram", user_id=user, chat_id=user),
        inputs=Inputs(
            photo_a=MediaRef(role="photo_a", size_bytes=1, sha256=DIGEST),
            photo_b=MediaRef(role="photo_b", size_bytes=1, sha256=DIGEST),
            dialogue=(Line(speaker="A", text="Hello."), Line(speaker="B", text="Hi.")),
        ),
    )


async def _prefill(queue: JobQueue, count: int) -> None:
    """Fill the queue directly (setup, not measured): `count` queued jobs from `count` users."""
    now = time.time()
    spec_json = _spec("x").model_dump_json()
    rows = [
        {
            "id": str(uuid.uuid4()), "owner_key": f"telegram:fill{i}", "platform": "telegram", "chat_id": "c",
            "spec_version": 1, "spec_json": spec_json, "state": "queued", "priority": 0, "fair_round": 0,
            "run_after": now, "attempts": 0, "max_attempts": 3, "created_at": now + i * 1e-6, "updated_at": now,
        }
        for i in range(count)
    ]

    async def unit(conn) -> None:
        for start in range(0, count, 1000):
            await conn.execute(insert(Job), rows[start : start + 1000])

    await queue.db.write(unit)


def _ms(values: list[float], q: int) -> float:
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000, 2)


async def run(url: str, *, queued: int, submits: int, claims: int, workers: int) -> dict:
    db = Database(url)
    await upgrade(db)
    settings = QueueSettings(max_queued=queued + submits + 10, max_active_per_user=1_000_000)
    queue = JobQueue(db, settings)
    await _prefill(queue, queued)

    latencies = []
    for i in range(submits):
        started = time.perf_counter()
        await queue.submit(_spec(f"bench{i}"))
        latencies.append(time.perf_counter() - started)

    result = JobResult(video=MediaRef(role="result", size_bytes=1, sha256=DIGEST), duration_s=1, width=8, height=8)
    done = 0

    async def worker(name: str) -> None:
        nonlocal done
        while done < claims:
            job = await queue.claim(name)
            if job is None:
                return
            await queue.complete(job.id, job.lease_token, result)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(f"w{i}") for i in range(workers)))
    elapsed = time.perf_counter() - started
    async with db.read() as conn:
        depth = await conn.scalar(text("SELECT count(*) FROM jobs WHERE state='queued'"))
    await db.dispose()
    return {
        "backend": db.writer.dialect.name,
        "queued_before_submits": queued,
        "submits": submits,
        "submit_p50_ms": _ms(latencies, 50),
        "submit_p99_ms": _ms(latencies, 99),
        "claim_complete_cycles": done,
        "workers": workers,
        "claims_per_s": round(done / elapsed, 1),
        "queued_after": depth,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--submits", type=int, default=1_000)
    parser.add_argument("--claims", type=int, default=2_000)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        url = args.url or f"sqlite+aiosqlite:///{Path(scratch) / 'bench.db'}"
        report = asyncio.run(
            run(url, queued=args.queued, submits=args.submits, claims=args.claims, workers=args.workers)
        )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
