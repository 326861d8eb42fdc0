"""`BotService`: the one façade the Discord and Telegram adapters call. Adapters translate, this decides.

Who may do what lives here, once: consent before the first job, ownership on every job read, cancel and
re-roll (someone else's job is "not found", never "not yours" — no existence oracle; an adapter that
*shows* a button to others may still say "not yours" for the press), admins from the config's allow-list of
numeric ids (`[discord] admin_ids`, `[telegram] admin_ids`; platform roles never count). Per-user limits,
cooldown and the queue cap are enforced by `JobQueue.submit` in the same transaction as the insert; this
class only carries its refusal (`SubmitRefused`) to the adapter, which shows `texts.error_text(...)`.

A request is built as a draft (`bot.core.drafts`): photos and script are checked as they arrive, so a
user hears about a bad photo at once; `preview` composes the frame; `submit_draft` queues it with the
draft id as idempotency key (a double-pressed Render or a redelivered update gives one job). Blocking CPU
work (decoding, face detection, composition) runs in a thread. Every method is safe to call concurrently.

Errors a caller handles: `bot.core.errors.InputError` (what the user sent; `.message(locale)`),
`ConsentRequired`, `DraftNotFound`, `storage.errors.JobNotFound`, `SubmitRefused`, `InvalidTransition`
(cancel of an ended job), `RerollInputsGone`. `texts.error_text` renders all but the first two.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from bot.core.compose import prepare_portrait
from bot.core.drafts import DraftNotFound, DraftState, DraftStore, PhotoSlot
from bot.core.limits import script_limits
from bot.core.photos import NotAnImageError, PhotoTooLargeError
from bot.core.preview import PreviewCard, build_preview
from bot.core.script import Dialogue, decode_script_bytes, parse_script
from bot.core.status import JobStatus, Throughput, load_status, measure_throughput
from bot.core.submit import Prepared, enqueue, photo_limits, prepare
from storage import admin
from storage.contract import ACTIVE_STATES, Requester, owner_key
from storage.errors import DuetError, JobNotFound, MediaError
from storage.media import MediaStore
from storage.queue import JobQueue, JobRecord
from storage.settings import Settings

PREPARED_CACHE_SIZE = 8
_COPIED_ROLES = ("photo_a", "photo_b", "frame")  # what a spec's inputs reference


class ConsentRequired(Exception):
    """The user has not accepted the notice yet; show `texts["consent.notice"]` with an Accept button."""


class RerollInputsGone(DuetError):
    """The job's photos were removed by retention, so it cannot be rendered again."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"The photos of job {job_id} have been deleted.", f"reroll of {job_id}: inputs removed")
        self.job_id = job_id


@dataclass(frozen=True)
class Actor:
    """Who presses the button or sends the command. Ids are the platform's numeric ids, as strings."""

    platform: str
    user_id: str
    locale: str = "en"

    @property
    def owner_key(self) -> str:
        return owner_key(self.platform, self.user_id)


@dataclass(frozen=True)
class Submission:
    job_id: str
    created: bool  # False: this request was already a job (a double press, a redelivered update)
    status: JobStatus
    status_message_id: str | None  # already posted for this job (then do not post another)


class BotService:
    def __init__(
        self,
        settings: Settings,
        queue: JobQueue,
        media: MediaStore,
        drafts: DraftStore,
        *,
        throughput_ttl_s: float = 60.0,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.media = media
        self.drafts = drafts
        self._throughput = Throughput()
        self._throughput_ttl_s = throughput_ttl_s
        self._throughput_lock = asyncio.Lock()
        self._prepared: OrderedDict[str, tuple[float, Prepared]] = OrderedDict()  # draft id -> (version, result)

    # ---- who -----------------------------------------------------------------------------------------

    def is_admin(self, actor: Actor) -> bool:
        """Only the config's allow-list of numeric ids (never a platform role or chat admin status)."""
        platform_settings = getattr(self.settings, actor.platform, None)
        return platform_settings is not None and actor.user_id in platform_settings.admin_ids

    async def has_consent(self, actor: Actor) -> bool:
        return await admin.has_consent(self.queue, actor.owner_key)

    async def record_consent(self, actor: Actor) -> None:
        await admin.record_consent(self.queue, actor.owner_key)

    # ---- drafts --------------------------------------------------------------------------------------

    async def start_draft(self, requester: Requester, **fields) -> DraftState:
        return await self.drafts.create(requester, **fields)

    async def draft(self, draft_id: str, actor: Actor) -> DraftState:
        """The actor's draft; someone else's is not found."""
        state = await self.drafts.get(draft_id)
        if state.requester.owner_key != actor.owner_key:
            raise DraftNotFound(draft_id)
        return state

    def check_photo_size(self, size_bytes: int | None, slot: PhotoSlot) -> None:
        """Refuse a photo by its announced size, before downloading it (platforms report it)."""
        limit = self.settings.limits.max_photo_bytes
        if size_bytes is not None and size_bytes > limit:
            raise PhotoTooLargeError(
                photo=slot, size_mb=f"{size_bytes / 2**20:.1f}", limit_mb=f"{limit / 2**20:.1f}", admin_detail="by size"
            )

    def check_announced_photo(self, size_bytes: int | None, content_type: str | None, slot: PhotoSlot) -> None:
        """Refuse by what the platform announces (size, MIME type), before downloading anything. The
        content decides in `add_photo`; a type here only refuses what is plainly not an image."""
        self.check_photo_size(size_bytes, slot)
        if content_type and not content_type.split(";")[0].strip().lower().startswith("image/"):
            raise NotAnImageError(photo=slot, admin_detail=f"announced as {content_type}")

    async def add_photo(self, draft_id: str, slot: PhotoSlot, data: bytes) -> DraftState:
        """Check one photo as a person would hear about it (format, size, one face) and keep it."""
        self.check_photo_size(len(data), slot)
        limits = photo_limits(self.settings)
        await asyncio.to_thread(prepare_portrait, data, photo=slot, limits=limits)
        return await self.drafts.put_photo(draft_id, slot, data)

    def read_script(self, raw: str | bytes) -> str:
        """A script from a message (text) or a file (bytes, any common encoding), cleaned and bounded."""
        if isinstance(raw, bytes):
            return decode_script_bytes(raw, script_limits(self.settings))
        return raw

    def check_script(self, script: str) -> Dialogue:
        """Parse now, so 0/1/3 speakers or an oversized script are refused before the preview."""
        return parse_script(script, script_limits(self.settings))

    async def set_script(self, draft_id: str, raw: str | bytes) -> DraftState:
        script = self.read_script(raw)
        self.check_script(script)
        return await self.drafts.update(draft_id, script=script)

    async def update_draft(self, draft_id: str, **fields) -> DraftState:
        return await self.drafts.update(draft_id, **fields)

    async def _prepare(self, state: DraftState, *, idempotency_key: str | None = None) -> Prepared:
        """`prepare` of the draft, reused while the draft is unchanged, so that Render after a preview does
        not decode and compose again. Only a few recent drafts are kept: a Prepared holds decoded images."""
        cached = self._prepared.get(state.id)
        if cached is None or cached[0] != state.updated_at:
            draft = await self.drafts.to_draft(state)
            cached = (state.updated_at, await asyncio.to_thread(prepare, draft, self.settings))
            self._prepared[state.id] = cached
            while len(self._prepared) > PREPARED_CACHE_SIZE:
                self._prepared.popitem(last=False)
        self._prepared.move_to_end(state.id)
        prepared = cached[1]
        return dataclasses.replace(prepared, draft=dataclasses.replace(prepared.draft, idempotency_key=idempotency_key))

    async def preview(self, draft_id: str) -> PreviewCard:
        """Check everything together (voices against the script's language too) and draw the card."""
        prepared = await self._prepare(await self.drafts.get(draft_id))
        throughput = await self.throughput()
        return await asyncio.to_thread(
            build_preview, prepared, draft_id, throughput, jobs_ahead=throughput.queued_jobs
        )

    async def discard_draft(self, draft_id: str, actor: Actor) -> None:
        await self.draft(draft_id, actor)
        await self.drafts.remove(draft_id)

    async def submit_draft(self, draft_id: str, actor: Actor, *, reply_to_message_id: str | None = None) -> Submission:
        """Queue the draft (consent first). The draft id is the idempotency key: pressing Render twice,
        or the platform redelivering the press after a restart, returns the same job.

        `reply_to_message_id`: the message the job answers when it is known only now (Discord: the
        preview card Render was pressed on); it does not touch the draft, so its prepare() is reused."""
        state = await self.draft(draft_id, actor)
        if not await self.has_consent(actor):
            raise ConsentRequired()
        prepared = await self._prepare(state, idempotency_key=f"{actor.platform}:draft:{draft_id}")
        if reply_to_message_id is not None:
            requester = prepared.draft.requester.model_copy(update={"reply_to_message_id": reply_to_message_id})
            prepared = dataclasses.replace(prepared, draft=dataclasses.replace(prepared.draft, requester=requester))
        submitted = await enqueue(prepared, self.queue, self.media)
        return await self._submission(submitted.job_id, submitted.created)

    async def _submission(self, job_id: str, created: bool) -> Submission:
        job = await self.queue.get(job_id)
        return Submission(job_id, created, await self.status(job), job.status_message_id)

    async def attach_status_message(self, job_id: str, message_id: str) -> None:
        """Remember the message the watcher edits from now on (survives restarts: it is in the row)."""
        await self.queue.set_status_message(job_id, message_id)

    # ---- jobs ----------------------------------------------------------------------------------------

    async def job(self, job_id: str, actor: Actor) -> JobRecord:
        """The actor's job (an admin sees every job); anything else is JobNotFound."""
        job_id = job_id.strip()
        try:
            uuid.UUID(job_id)
        except ValueError:
            raise JobNotFound(job_id[:40]) from None
        return await self.queue.get(job_id, owner_key=None if self.is_admin(actor) else actor.owner_key)

    async def list_jobs(self, actor: Actor, *, limit: int = 10) -> list[JobRecord]:
        return await self.queue.list_jobs(owner_key=actor.owner_key, limit=limit)

    async def cancel(self, job_id: str, actor: Actor) -> JobStatus:
        """Cancel a queued job at once, or ask a running one to stop. Returns the status after it."""
        job = await self.job(job_id, actor)
        await self.queue.cancel(job.id, actor=actor.owner_key, is_admin=self.is_admin(actor))
        return await self.status(await self.queue.get(job.id))

    async def cancel_latest(self, actor: Actor) -> JobStatus | None:
        """`/cancel` without an id: the actor's newest active job, or None when there is none."""
        active = await self.queue.list_jobs(
            owner_key=actor.owner_key, states=[state.value for state in ACTIVE_STATES], limit=1
        )
        return await self.cancel(active[0].id, actor) if active else None

    async def reroll(self, job_id: str, actor: Actor, requester: Requester, *, idempotency_key: str) -> Submission:
        """The same inputs and settings with a new seed, as a new job answered to `requester`'s chat."""
        old = await self.job(job_id, actor)
        spec = old.spec
        new_id = str(uuid.uuid4())
        try:
            for role in _COPIED_ROLES:
                ref = getattr(spec.inputs, role)
                if ref is not None:
                    await self.media.put(new_id, role, await self.media.read(ref, old.id))
        except (MediaError, FileNotFoundError):
            await self.media.remove_job(new_id)
            raise RerollInputsGone(old.id) from None
        new_spec = spec.model_copy(
            update={
                "requester": requester,
                "idempotency_key": idempotency_key,
                "render": spec.render.model_copy(update={"seed": random.randrange(2**32)}),
                "reroll_of": old.id,
            }
        )
        try:
            submitted = await self.queue.submit(new_spec, job_id=new_id)
        except BaseException:
            await self.media.remove_job(new_id)
            raise
        if not submitted.created:
            await self.media.remove_job(new_id)
        return await self._submission(submitted.job_id, submitted.created)

    # ---- status --------------------------------------------------------------------------------------

    async def throughput(self) -> Throughput:
        """Measured engine speed, refreshed at most every `throughput_ttl_s`."""
        async with self._throughput_lock:
            if time.time() - self._throughput.measured_at > self._throughput_ttl_s:
                self._throughput = await measure_throughput(self.queue)
            return self._throughput

    async def status(self, job: JobRecord) -> JobStatus:
        return await load_status(self.queue, job, await self.throughput())
