"""Builders shared by the storage tests: specs, a controllable clock, database URLs for both backends."""

from __future__ import annotations

import os
import uuid

from storage.contract import Inputs, JobSpec, Line, MediaRef, Requester

PG_ENV = "DUET_TEST_PG_URL"
FAKE_SHA = "0" * 64


class FakeClock:
    """Time that moves only when a test moves it: leases expire without sleeping."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_spec(user: str = "u1", key: str | None = None, platform: str = "telegram", seed: int = 42) -> JobSpec:
    return JobSpec(
        requester=Requester(platform=platform, user_id=user, chat_id=f"chat-{user}"),
        idempotency_key=key,
        inputs=Inputs(
            photo_a=MediaRef(role="photo_a", size_bytes=10, sha256=FAKE_SHA),
            photo_b=MediaRef(role="photo_b", size_bytes=10, sha256=FAKE_SHA),
            dialogue=(Line(speaker="A", text="Hello there."), Line(speaker="B", text="Hi!")),
        ),
        render={"seed": seed},
    )


def owner(user: str, platform: str = "telegram") -> str:
    return f"{platform}:{user}"


def pg_base_url() -> str | None:
    return os.environ.get(PG_ENV) or None


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"
