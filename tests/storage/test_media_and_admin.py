"""Media store (atomic files, digests, no user names on disk, janitor) and the operator verbs."""

from __future__ import annotations

import hashlib
import os
import uuid

import pytest
from queue_helpers import make_spec, owner

from storage import admin
from storage.contract import JobResult, MediaRef
from storage.errors import MediaError, SubmitRefused
from storage.media import MediaStore


@pytest.fixture
def media(db, tmp_path) -> MediaStore:
    return MediaStore(tmp_path / "media", db, max_file_bytes=1000)


async def test_put_writes_under_the_job_uuid_with_a_fixed_name(media):
    job_id = str(uuid.uuid4())
    ref = await media.put(job_id, "photo_a", b"\x89PNG fake")
    path = media.path(job_id, "photo_a")
    assert path == media.root / job_id / "photo_a.png" and path.read_bytes() == b"\x89PNG fake"
    assert ref.sha256 == hashlib.sha256(b"\x89PNG fake").hexdigest() and ref.size_bytes == 9
    assert [p.name for p in path.parent.iterdir()] == ["photo_a.png"]  # no temp file left behind
    assert await media.read(ref, job_id) == b"\x89PNG fake"


async def test_a_changed_file_is_refused(media):
    job_id = str(uuid.uuid4())
    ref = await media.put(job_id, "photo_a", b"original")
    media.path(job_id, "photo_a").write_bytes(b"tampered")
    with pytest.raises(MediaError, match="damaged"):
        await media.read(ref, job_id)


@pytest.mark.parametrize("bad_id", ["../../etc", "/abs/path", "x.png\x00.sh", "..", "CON", "a" * 300])
async def test_only_uuids_name_directories(media, bad_id):
    with pytest.raises(MediaError):
        await media.put(bad_id, "photo_a", b"x")
    assert not any(media.root.rglob("*")) if media.root.exists() else True


async def test_size_cap(media):
    with pytest.raises(MediaError, match="too large"):
        await media.put(str(uuid.uuid4()), "result", b"x" * 1001)


async def test_adopt_moves_an_engine_file_into_place(media, tmp_path):
    scratch = tmp_path / "scratch.mp4"
    scratch.write_bytes(b"mp4 bytes")
    job_id = str(uuid.uuid4())
    ref = await media.adopt(job_id, "result", scratch)
    assert not scratch.exists() and media.path(job_id, "result").read_bytes() == b"mp4 bytes"
    assert ref.sha256 == hashlib.sha256(b"mp4 bytes").hexdigest()


async def test_orphan_directories_are_removed_once_old(queue, media, clock):
    kept = (await queue.submit(make_spec("a"))).job_id
    await media.put(kept, "photo_a", b"kept")
    orphan = str(uuid.uuid4())
    await media.put(orphan, "photo_a", b"refused submission")
    foreign = media.root / "not-a-job"
    foreign.mkdir()
    assert await media.remove_orphans(older_than_s=3600) == []  # too young: a submit may be in flight
    future = clock.now + 7200
    for path in (media.root / kept, media.root / orphan, foreign):
        os.utime(path, (clock.now - 7200, clock.now - 7200))
    assert await media.remove_orphans(older_than_s=3600, now=future) == [orphan]
    assert (media.root / kept).exists() and foreign.exists() and not (media.root / orphan).exists()


async def test_retention_and_purge(queue, media, clock, queue_settings):
    done = (await queue.submit(make_spec("a"))).job_id
    clock.advance(1)
    active = (await queue.submit(make_spec("b"))).job_id
    for job_id in (done, active):
        await media.put(job_id, "photo_a", b"in")
    job = await queue.claim("w")
    assert job.id == done
    result = await media.put(done, "result", b"out")
    await queue.complete(done, job.lease_token, JobResult(video=result, duration_s=1, width=8, height=8))

    clock.advance(queue_settings.keep_inputs_hours * 3600 + 1)
    removed = await admin.enforce_retention(queue, media)
    assert removed["inputs"] == 1 and removed["jobs"] == 0
    assert not media.path(done, "photo_a").exists() and media.path(done, "result").exists()
    assert media.path(active, "photo_a").exists()  # an active job keeps its inputs

    clock.advance(queue_settings.keep_results_days * 86400)
    await admin.enforce_retention(queue, media)
    assert not media.path(done, "result").exists()

    assert await admin.purge(queue, media, older_than_s=0) == [done]
    assert [j.id for j in await queue.list_jobs()] == [active]
    assert not (media.root / done).exists()


async def test_stats_percentiles_and_throughput(queue, clock):
    for i in range(4):
        await queue.submit(make_spec(f"u{i}"))
    for wait in (10, 20, 30, 40):
        clock.advance(wait)
        job = await queue.claim("w")
        clock.advance(100)
        ref = MediaRef(role="result", size_bytes=1, sha256="d" * 64)
        await queue.complete(job.id, job.lease_token, JobResult(video=ref, duration_s=1, width=8, height=8))
    result = await admin.stats(queue)
    assert result.counts["succeeded"] == 4 and result.counts["queued"] == 0
    assert result.render_time.p50_s == pytest.approx(100)
    assert result.queue_wait.count == 4 and result.queue_wait.p50_s > 0
    assert result.succeeded_last_day == 4


async def test_blocking_a_user_cancels_their_queue_and_refuses_new_jobs(queue):
    job_id = (await queue.submit(make_spec("spammer"))).job_id
    await admin.set_user(queue, owner("spammer"), blocked=True)
    assert (await queue.get(job_id)).state == "cancelled"
    with pytest.raises(SubmitRefused) as refused:
        await queue.submit(make_spec("spammer", seed=2))
    assert refused.value.reason == "blocked"
    await admin.set_user(queue, owner("spammer"), blocked=False)
    await queue.submit(make_spec("spammer", seed=3))


async def test_a_user_quota_overrides_the_default(queue):
    await admin.set_user(queue, owner("vip"), max_active=1)
    await queue.submit(make_spec("vip"))
    with pytest.raises(SubmitRefused):
        await queue.submit(make_spec("vip", seed=2))
    users = {u["owner_key"]: u for u in await admin.list_users(queue)}
    assert users[owner("vip")]["max_active"] == 1 and users[owner("vip")]["active_jobs"] == 1


async def test_consent_is_remembered(queue):
    assert not await admin.has_consent(queue, owner("new"))
    await admin.record_consent(queue, owner("new"))
    assert await admin.has_consent(queue, owner("new"))


async def test_workers_heartbeat_drain_and_lost(queue, clock):
    await admin.register_worker(queue, "gpu-1", host="h", pid=1, world_size=8, info={"preset": "tiny"})
    assert await admin.worker_heartbeat(queue, "gpu-1", state="busy", current_job_id=None) is False
    assert await admin.request_drain(queue, "gpu-1") == 1
    assert await admin.worker_heartbeat(queue, "gpu-1", state="busy", current_job_id=None) is True
    clock.advance(queue.settings.lease_s + 1)
    (worker,) = await admin.list_workers(queue)
    assert worker["state"] == "lost" and worker["world_size"] == 8
