"""From what a user gave to a queued job — the one path shared by Discord, Telegram and `duet queue submit`.

Two steps, so a front end can show a preview between them: `prepare` (CPU only: parse the script, choose
voices, check and compose the photos; raises `InputError` with a localised message) and `enqueue` (store
the media under the job's UUID, then queue the spec). Media are written before the row, so a refused or
duplicate submission leaves a directory without a row, which `enqueue` removes at once.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

from bot.core.compose import Composition, Portrait, choose_bucket, compose_portraits, draw_preview, prepare_portrait
from bot.core.photos import PhotoLimits, png_bytes
from bot.core.limits import script_limits
from bot.core.script import Dialogue, parse_script
from bot.core.voices import VoicePlan, plan_voices
from storage.contract import Box, Inputs, JobSpec, Line, RenderSettings, Requester, Voices
from storage.media import MediaStore
from storage.queue import JobQueue, Submitted
from storage.settings import Settings


@dataclass(frozen=True)
class Draft:
    """A request as the user made it: raw bytes and text, nothing checked yet."""

    requester: Requester
    photo_a: bytes
    photo_b: bytes
    script: str
    scene: str = ""
    voice_a: str | None = None
    voice_b: str | None = None
    language: str = "auto"
    quality: str | None = None
    seed: int | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Prepared:
    """A checked request: what the preview card shows and what `enqueue` stores."""

    draft: Draft
    dialogue: Dialogue
    voices: VoicePlan
    portraits: tuple[Portrait, Portrait]
    composition: Composition
    render: RenderSettings

    @property
    def estimated_speech_s(self) -> float:
        return self.dialogue.estimated_speech_s()

    def preview_png(self) -> bytes:
        return png_bytes(draw_preview(self.composition))


def photo_limits(settings: Settings) -> PhotoLimits:
    limits = settings.limits
    return PhotoLimits(
        max_bytes=limits.max_photo_bytes, max_pixels=limits.max_photo_pixels, min_short_side=limits.min_photo_side
    )


def prepare(draft: Draft, settings: Settings) -> Prepared:
    """Check everything a user supplied (blocking CPU work: call through `asyncio.to_thread`)."""
    dialogue = parse_script(draft.script, script_limits(settings))
    voices = plan_voices(dialogue, draft.voice_a, draft.voice_b, draft.language)  # type: ignore[arg-type]
    defaults = settings.render
    quality = draft.quality or defaults.quality
    limits = photo_limits(settings)
    portraits = (
        prepare_portrait(draft.photo_a, photo="A", limits=limits),
        prepare_portrait(draft.photo_b, photo="B", limits=limits),
    )
    composition = compose_portraits(*portraits, bucket=choose_bucket(quality))
    render = RenderSettings(
        quality=quality,
        steps=defaults.steps,
        text_guidance=defaults.text_guidance,
        audio_guidance=defaults.audio_guidance,
        use_teacache=defaults.use_teacache,
        use_apg=defaults.use_apg,
        seed=draft.seed if draft.seed is not None else random.randrange(2**32),
        max_seconds=settings.limits.max_speech_s,
    )
    return Prepared(
        draft=draft, dialogue=dialogue, voices=voices, portraits=portraits, composition=composition, render=render
    )


def _box(box) -> Box:
    x0, y0, x1, y1 = box.as_tuple()
    return Box(x0=x0, y0=y0, x1=x1, y1=y1)


async def enqueue(prepared: Prepared, queue: JobQueue, media: MediaStore, *, priority: int = 0) -> Submitted:
    """Store the media, then queue the job; a refusal or a duplicate leaves no files behind."""
    draft = prepared.draft
    job_id = str(uuid.uuid4())
    composition = prepared.composition
    try:
        # The normalised photos (upright, RGB, metadata stripped), never the uploaded bytes.
        photo_a = await media.put(job_id, "photo_a", png_bytes(prepared.portraits[0].photo.image))
        photo_b = await media.put(job_id, "photo_b", png_bytes(prepared.portraits[1].photo.image))
        frame = await media.put(job_id, "frame", composition.png_bytes())
        await media.put(job_id, "preview", prepared.preview_png())
        spec = JobSpec(
            requester=draft.requester,
            idempotency_key=draft.idempotency_key,
            inputs=Inputs(
                photo_a=photo_a,
                photo_b=photo_b,
                frame=frame,
                box_a=_box(composition.person_boxes[0]),
                box_b=_box(composition.person_boxes[1]),
                dialogue=tuple(Line(speaker=line.speaker, text=line.text) for line in prepared.dialogue.lines),
                scene=draft.scene,
                voices=Voices(a=prepared.voices.voices["A"].id, b=prepared.voices.voices["B"].id),
                language=draft.language,
            ),
            render=prepared.render,
        )
        submitted = await queue.submit(spec, job_id=job_id, priority=priority)
    except BaseException:
        await media.remove_job(job_id)
        raise
    if not submitted.created:
        await media.remove_job(job_id)
    return submitted
