"""Media files: one directory per job, named by the job's UUID, with fixed file names per role.

A file is written under a temporary name, fsynced, renamed into place (and the directory fsynced), and only
then is its row committed: a crash leaves either no file, or a file without a row (which the janitor
removes), never a row pointing at a half-written file. User-supplied file names never reach the disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import time
import uuid
from pathlib import Path

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.contract import MediaRef, MediaRole
from storage.db import Database
from storage.errors import MediaError
from storage.tables import Job, JobMedia

FILE_NAMES: dict[str, str] = {
    "photo_a": "photo_a.png",
    "photo_b": "photo_b.png",
    "frame": "frame.png",
    "preview": "preview.png",
    "speech": "speech.wav",
    "result": "result.mp4",
    "result_fitted": "result_fitted.mp4",
}
INPUT_ROLES = ("photo_a", "photo_b", "frame", "preview", "speech")
RESULT_ROLES = ("result", "result_fitted")


def _check_job_id(job_id: str) -> str:
    try:
        return str(uuid.UUID(job_id))
    except ValueError:
        raise MediaError("Invalid job id.", f"not a UUID: {job_id!r}") from None


def write_atomically(path: Path, data: bytes) -> str:
    """Temp file, fsync, rename, fsync the directory; returns the data's sha256. Readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class MediaStore:
    def __init__(self, root: Path | str, db: Database, *, max_file_bytes: int = 200 * 1024 * 1024) -> None:
        self.root = Path(root).resolve()
        self.db = db
        self.max_file_bytes = max_file_bytes

    def job_dir(self, job_id: str) -> Path:
        directory = (self.root / _check_job_id(job_id)).resolve()
        if not directory.is_relative_to(self.root):
            raise MediaError("Invalid job id.", f"path escapes the media root: {directory}")
        return directory

    def path(self, job_id: str, role: MediaRole) -> Path:
        return self.job_dir(job_id) / FILE_NAMES[role]

    async def put(self, job_id: str, role: MediaRole, data: bytes) -> MediaRef:
        """Store `data` as the job's `role` file; returns the reference a spec or result carries."""
        if len(data) > self.max_file_bytes:
            raise MediaError("That file is too large.", f"{role}: {len(data)} bytes > {self.max_file_bytes}")
        path = self.path(job_id, role)
        digest = await asyncio.to_thread(write_atomically, path, data)
        await self._record(job_id, role, path, len(data), digest)
        return MediaRef(role=role, size_bytes=len(data), sha256=digest)

    async def adopt(self, job_id: str, role: MediaRole, source: Path) -> MediaRef:
        """Move a file the engine wrote (e.g. an MP4 in a scratch dir) into place, same rules as `put`."""
        size = source.stat().st_size
        if size > self.max_file_bytes:
            raise MediaError("That file is too large.", f"{role}: {size} bytes > {self.max_file_bytes}")
        path = self.path(job_id, role)

        def move() -> str:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(source, "rb") as handle:
                os.fsync(handle.fileno())
            shutil.move(source, path)  # a rename on the same file system, a copy across
            return sha256_file(path)

        digest = await asyncio.to_thread(move)
        await self._record(job_id, role, path, size, digest)
        return MediaRef(role=role, size_bytes=size, sha256=digest)

    async def _record(self, job_id: str, role: str, path: Path, size: int, digest: str) -> None:
        async def unit(conn: AsyncConnection) -> None:
            await conn.execute(delete(JobMedia).where(JobMedia.job_id == job_id, JobMedia.role == role))
            await conn.execute(
                insert(JobMedia).values(
                    job_id=job_id,
                    role=role,
                    rel_path=str(path.relative_to(self.root)),
                    size_bytes=size,
                    sha256=digest,
                    created_at=time.time(),
                )
            )

        await self.db.write(unit)

    async def read(self, ref: MediaRef, job_id: str) -> bytes:
        """The file's bytes, refused if they no longer match the digest the job recorded."""
        data = await asyncio.to_thread(self.path(job_id, ref.role).read_bytes)
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise MediaError("A file of this job is damaged.", f"{job_id}/{ref.role}: sha256 mismatch")
        return data

    async def remove_job(self, job_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.job_dir(job_id), True)

        async def unit(conn: AsyncConnection) -> None:
            await conn.execute(delete(JobMedia).where(JobMedia.job_id == job_id))

        await self.db.write(unit)

    async def remove_roles(self, job_id: str, roles: tuple[str, ...]) -> None:
        for role in roles:
            await asyncio.to_thread(lambda r=role: self.path(job_id, r).unlink(missing_ok=True))

        async def unit(conn: AsyncConnection) -> None:
            await conn.execute(delete(JobMedia).where(JobMedia.job_id == job_id, JobMedia.role.in_(roles)))

        await self.db.write(unit)

    async def remove_orphans(self, *, older_than_s: float = 3600.0, now: float | None = None) -> list[str]:
        """Delete job directories that have no job row (a refused or crashed submission) once they are old
        enough that no submission can still be on its way to the database."""
        now = time.time() if now is None else now
        if not self.root.exists():
            return []
        async with self.db.read() as conn:
            known = set((await conn.execute(select(Job.id))).scalars())
        removed = []
        for entry in await asyncio.to_thread(lambda: list(self.root.iterdir())):
            if entry.name in known or not entry.is_dir():
                continue
            if now - entry.stat().st_mtime < older_than_s:
                continue
            try:
                _check_job_id(entry.name)
            except MediaError:
                continue  # not ours: never delete what we did not create
            await self.remove_job(entry.name)
            removed.append(entry.name)
        return removed
