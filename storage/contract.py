"""The job contract: what a job asks for (`JobSpec`), its states, and what a finished job produced.

The spec is validated once, at submission, and stored as versioned JSON next to the job's state. Bots
write it, the engine reads it; neither trusts anything else. Bump `SPEC_VERSION` and keep a reader for
the old version when a field changes meaning: the database outlives upgrades.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SPEC_VERSION = 1

# Media roles are fixed file names inside the job's directory: user-supplied names never reach disk.
MEDIA_ROLES = (
    "photo_a",
    "photo_b",
    "frame",
    "preview",
    "speech",
    "result",
    "result_fitted",
)
MediaRole = Literal["photo_a", "photo_b", "frame", "preview", "speech", "result", "result_fitted"]


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DEAD = "dead"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.DEAD})
ACTIVE_STATES = frozenset({JobState.QUEUED, JobState.RUNNING})


class Stage(StrEnum):
    """What a running job is doing; `render` comes with `i/N` chunk-step progress."""

    TTS = "tts"
    AUDIO = "audio"
    ENCODE = "encode"
    RENDER = "render"
    DECODE = "decode"
    MUX = "mux"


class DeliveryState(StrEnum):
    NONE = "none"  # nothing to deliver (CLI jobs, unfinished or unsuccessful jobs)
    PENDING = "pending"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    FAILED = "failed"


class Platform(StrEnum):
    DISCORD = "discord"
    TELEGRAM = "telegram"
    CLI = "cli"


Quality = Literal["480p", "720p"]
Language = Literal["auto", "en", "zh"]
Speaker = Literal["A", "B"]

_ID = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[0-9A-Za-z_.:@-]+$")]
_VOICE = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z]{2}_[a-z0-9]+$")]
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class Requester(_Frozen):
    """Who asked and where the answer goes. Platform ids stay strings end to end."""

    platform: Platform
    user_id: _ID
    chat_id: _ID
    guild_id: _ID | None = None
    reply_to_message_id: _ID | None = None
    locale: str = Field(default="en", max_length=16)

    @property
    def owner_key(self) -> str:
        return owner_key(self.platform, self.user_id)


def owner_key(platform: str, user_id: str) -> str:
    """The one identity a job is owned by: numeric platform ids, never usernames."""
    return f"{platform}:{user_id}"


class MediaRef(_Frozen):
    """A file in the job's media directory, by role; the digest proves it is the file that was checked."""

    role: MediaRole
    size_bytes: int = Field(ge=0)
    sha256: str

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if not _SHA256.match(value):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return value


class Box(_Frozen):
    """A person's region in the composed reference frame, in pixels of that frame."""

    x0: int = Field(ge=0)
    y0: int = Field(ge=0)
    x1: int = Field(gt=0)
    y1: int = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Box:
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise ValueError("a box needs x0 < x1 and y0 < y1")
        return self


class Line(_Frozen):
    speaker: Speaker
    text: str = Field(min_length=1, max_length=1000)


class Voices(_Frozen):
    a: _VOICE = "af_heart"
    b: _VOICE = "am_adam"


class Inputs(_Frozen):
    """What the user gave, after validation and composition (photo A stands left and speaks as A)."""

    photo_a: MediaRef
    photo_b: MediaRef
    frame: MediaRef | None = None
    box_a: Box | None = None
    box_b: Box | None = None
    dialogue: tuple[Line, ...] = Field(min_length=1, max_length=200)
    scene: str = Field(default="", max_length=500)
    voices: Voices = Voices()
    language: Language = "auto"
    speech_speed: float = Field(default=1.0, ge=0.5, le=2.0)

    @model_validator(mode="after")
    def _two_speakers(self) -> Inputs:
        if {line.speaker for line in self.dialogue} != {"A", "B"}:
            raise ValueError("a dialogue needs lines from both speaker A and speaker B")
        if (self.box_a is None) != (self.box_b is None):
            raise ValueError("give both boxes or neither")
        return self


class LoraRef(_Frozen):
    name: str = Field(pattern=r"^[0-9A-Za-z_.-]{1,100}$")
    scale: float = Field(default=1.0, ge=0.0, le=4.0)


class RenderSettings(_Frozen):
    """How to render. Defaults are the reference's; the engine may clamp to what its preset supports."""

    quality: Quality = "720p"
    steps: int = Field(default=40, ge=1, le=100)
    text_guidance: float = Field(default=5.0, ge=0.0, le=20.0)
    audio_guidance: float = Field(default=4.0, ge=0.0, le=20.0)
    sample_shift: float | None = Field(default=None, gt=0.0, le=50.0)
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    use_teacache: bool = False
    use_apg: bool = False
    loras: tuple[LoraRef, ...] = Field(default=(), max_length=4)
    max_seconds: float = Field(default=60.0, gt=0.0, le=600.0)
    fit_bytes: int | None = Field(default=None, gt=0)


class JobSpec(_Frozen):
    """One request, immutable once queued. Mutable facts (state, status message id) live in columns."""

    spec_version: Literal[1] = SPEC_VERSION
    requester: Requester
    idempotency_key: str | None = Field(default=None, max_length=200)
    inputs: Inputs
    render: RenderSettings = RenderSettings()
    reroll_of: str | None = Field(default=None, max_length=36)

    @classmethod
    def from_json(cls, raw: str) -> JobSpec:
        return cls.model_validate_json(raw)


class StageTiming(_Frozen):
    stage: str
    seconds: float = Field(ge=0.0)


class JobResult(_Frozen):
    """What a succeeded job produced. Written once, by the worker that held the lease."""

    video: MediaRef
    fitted_video: MediaRef | None = None
    duration_s: float = Field(ge=0.0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    timings: tuple[StageTiming, ...] = ()
