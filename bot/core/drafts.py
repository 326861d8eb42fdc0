"""Drafts: a request being put together (photos, script, scene, voices) before it becomes a job.

A draft lives on disk under `<media_dir>/drafts/<draft id>/` (a JSON state file plus the two uploaded
photos), so a conversation survives a restart of the bot and a preview's buttons keep working; a chat
library's own persistence only needs to hold the draft id. The media janitor never touches this folder
(its name is not a job UUID). Files are written to a temporary name and renamed, so a crash leaves the
old state or the new one. Drafts are pruned a day after their last change.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from bot.core.submit import Draft
from storage.contract import Requester
from storage.media import write_atomically

PhotoSlot = Literal["A", "B"]
DRAFT_TTL_S = 24 * 3600.0


class DraftNotFound(LookupError):
    """No such draft (never made, pruned, or already submitted and removed)."""


class DraftState(BaseModel):
    """What a user has given so far. Photos are files beside the state, not fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    requester: Requester
    has_photo_a: bool = False
    has_photo_b: bool = False
    script: str | None = None
    scene: str = ""
    voice_a: str | None = None
    voice_b: str | None = None
    language: Literal["auto", "en", "zh"] = "auto"
    quality: Literal["480p", "720p"] | None = None
    seed: int | None = None
    created_at: float
    updated_at: float

    @property
    def is_complete(self) -> bool:
        return self.has_photo_a and self.has_photo_b and bool(self.script)


class DraftStore:
    def __init__(self, root: Path | str, *, clock=time.time) -> None:
        self.root = Path(root).resolve()
        self.clock = clock

    @classmethod
    def beside_media(cls, media_dir: Path | str) -> DraftStore:
        return cls(Path(media_dir) / "drafts")

    def _dir(self, draft_id: str) -> Path:
        try:
            name = uuid.UUID(hex=draft_id).hex
        except ValueError:
            raise DraftNotFound(draft_id) from None
        return self.root / name

    async def create(self, requester: Requester, **fields) -> DraftState:
        now = self.clock()
        state = DraftState(id=uuid.uuid4().hex, requester=requester, created_at=now, updated_at=now, **fields)
        await self._save(state)
        return state

    async def get(self, draft_id: str) -> DraftState:
        path = self._dir(draft_id) / "draft.json"
        try:
            raw = await asyncio.to_thread(path.read_text, encoding="utf-8")
        except FileNotFoundError:
            raise DraftNotFound(draft_id) from None
        return DraftState.model_validate_json(raw)

    async def update(self, draft_id: str, **fields) -> DraftState:
        state = await self.get(draft_id)
        state = state.model_copy(update=fields | {"updated_at": self.clock()})
        DraftState.model_validate(state.model_dump())  # model_copy does not validate
        await self._save(state)
        return state

    async def put_photo(self, draft_id: str, slot: PhotoSlot, data: bytes) -> DraftState:
        directory = self._dir(draft_id)
        await self.get(draft_id)
        await asyncio.to_thread(write_atomically, directory / f"photo_{slot.lower()}.bin", data)
        return await self.update(draft_id, **{f"has_photo_{slot.lower()}": True})

    async def to_draft(self, state: DraftState, *, idempotency_key: str | None = None) -> Draft:
        """The submit-ready request (photos read from disk). The draft must be complete."""
        if not state.is_complete:
            raise ValueError(f"draft {state.id} is not complete")
        directory = self._dir(state.id)
        photo_a = await asyncio.to_thread((directory / "photo_a.bin").read_bytes)
        photo_b = await asyncio.to_thread((directory / "photo_b.bin").read_bytes)
        return Draft(
            requester=state.requester,
            photo_a=photo_a,
            photo_b=photo_b,
            script=state.script or "",
            scene=state.scene,
            voice_a=state.voice_a,
            voice_b=state.voice_b,
            language=state.language,
            quality=state.quality,
            seed=state.seed,
            idempotency_key=idempotency_key,
        )

    async def remove(self, draft_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self._dir(draft_id), True)

    async def prune(self, *, older_than_s: float = DRAFT_TTL_S) -> list[str]:
        """Remove drafts untouched for `older_than_s`; returns their ids."""
        cutoff = self.clock() - older_than_s

        def old_ones() -> list[str]:
            if not self.root.exists():
                return []
            return [
                entry.name
                for entry in self.root.iterdir()
                if entry.is_dir() and (entry / "draft.json").exists() and (entry / "draft.json").stat().st_mtime < cutoff
            ]

        removed = await asyncio.to_thread(old_ones)
        for draft_id in removed:
            await self.remove(draft_id)
        return removed

    async def _save(self, state: DraftState) -> None:
        directory = self._dir(state.id)

        def write() -> None:
            directory.mkdir(parents=True, exist_ok=True)
            write_atomically(directory / "draft.json", state.model_dump_json().encode("utf-8"))

        await asyncio.to_thread(write)
