"""Discord API objects as the fake Discord sends them: users, the test guild, messages and
interactions, shaped like the real API (v10) so discord.py 2.7 parses them unmodified.

Only the fake server builds these; tests receive them back from its helpers. Fields discord.py
reads with `data[...]` must be present (e.g. member `flags`, interaction
`attachment_size_limit`); the rest mirror what Discord sends so bot code may rely on them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DISCORD_DEFAULT_UPLOAD_LIMIT_BYTES = 10 * 1024 * 1024
ALL_PERMISSIONS = str((1 << 50) - 1)

# Interaction types (Discord "Interaction Type") and callback types ("Interaction Callback Type").
INTERACTION_APPLICATION_COMMAND = 2
INTERACTION_MESSAGE_COMPONENT = 3
INTERACTION_AUTOCOMPLETE = 4
INTERACTION_MODAL_SUBMIT = 5
CALLBACK_MESSAGE = 4
CALLBACK_DEFERRED_MESSAGE = 5
CALLBACK_DEFERRED_UPDATE = 6
CALLBACK_UPDATE_MESSAGE = 7
CALLBACK_AUTOCOMPLETE_RESULT = 8
CALLBACK_MODAL = 9

MESSAGE_FLAG_EPHEMERAL = 1 << 6
MESSAGE_FLAG_LOADING = 1 << 7

CHANNEL_GUILD_TEXT = 0
CHANNEL_DM = 1


DISCORD_EPOCH_MS = 1_420_070_400_000


class SnowflakeFactory:
    """Increasing ids that encode the time they were made, as Discord's do: a bot may read a message's
    age from its id (e.g. to stop editing status messages older than an hour)."""

    def __init__(self) -> None:
        self._last = 0

    def __call__(self) -> str:
        now = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        self._last = max(self._last + 1, now)  # the low 22 bits keep ids of one millisecond distinct
        return str(self._last)


def timestamp_now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class FakeUser:
    id: str
    username: str
    is_bot: bool = False
    locale: str = "en-US"
    global_name: str | None = None

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "global_name": self.global_name or self.username,
            "discriminator": "0",
            "avatar": None,
            "bot": self.is_bot,
            "public_flags": 0,
        }

    def member_payload(self, joined_at: str) -> dict[str, Any]:
        return {
            "user": self.payload(),
            "nick": None,
            "roles": [],
            "joined_at": joined_at,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "permissions": ALL_PERMISSIONS,
        }


@dataclass
class FakeChannel:
    id: str
    kind: int
    name: str
    guild_id: str | None = None
    recipient: FakeUser | None = None

    def payload(self) -> dict[str, Any]:
        if self.kind == CHANNEL_DM:
            assert self.recipient is not None
            return {
                "id": self.id,
                "type": CHANNEL_DM,
                "recipients": [self.recipient.payload()],
                "last_message_id": None,
            }
        return {
            "id": self.id,
            "type": self.kind,
            "guild_id": self.guild_id,
            "name": self.name,
            "position": 0,
            "permission_overwrites": [],
            "nsfw": False,
            "topic": None,
            "parent_id": None,
            "rate_limit_per_user": 0,
            "last_message_id": None,
        }


@dataclass
class FakeGuild:
    id: str
    name: str
    owner: FakeUser
    channels: list[FakeChannel]
    members: list[FakeUser] = field(default_factory=list)
    joined_at: str = field(default_factory=timestamp_now)

    def payload(self) -> dict[str, Any]:
        """The GUILD_CREATE body: the full guild with its channels and members."""
        everyone = {
            "id": self.id,
            "name": "@everyone",
            "permissions": ALL_PERMISSIONS,
            "position": 0,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }
        return {
            "id": self.id,
            "name": self.name,
            "owner_id": self.owner.id,
            "unavailable": False,
            "large": False,
            "member_count": len(self.members),
            "roles": [everyone],
            "emojis": [],
            "stickers": [],
            "features": [],
            "channels": [c.payload() for c in self.channels],
            "threads": [],
            "members": [m.member_payload(self.joined_at) for m in self.members],
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "joined_at": self.joined_at,
            "preferred_locale": "en-US",
            "premium_tier": 0,
            "system_channel_flags": 0,
        }


def message_payload(
    *,
    message_id: str,
    channel: FakeChannel,
    author: FakeUser,
    content: str = "",
    attachments: list[dict[str, Any]] | None = None,
    embeds: list[dict[str, Any]] | None = None,
    components: list[dict[str, Any]] | None = None,
    flags: int = 0,
    application_id: str | None = None,
    interaction_metadata: dict[str, Any] | None = None,
    message_reference: dict[str, Any] | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": message_id,
        "channel_id": channel.id,
        "author": author.payload(),
        "content": content,
        "timestamp": timestamp_now(),
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": False,
        "mentions": [],
        "mention_roles": [],
        "attachments": attachments or [],
        "embeds": embeds or [],
        "components": components or [],
        "pinned": False,
        "type": 0 if message_reference is None else 19,
        "flags": flags,
    }
    if channel.guild_id is not None:
        message["guild_id"] = channel.guild_id
    if application_id is not None:
        message["application_id"] = application_id
    if interaction_metadata is not None:
        # Interaction responses are sent through the application's webhook.
        message["webhook_id"] = application_id
        message["interaction_metadata"] = interaction_metadata
    if message_reference is not None:
        message["message_reference"] = message_reference
    return message


def attachment_payload(
    *,
    attachment_id: str,
    filename: str,
    size: int,
    url: str,
    content_type: str | None,
    width: int | None,
    height: int | None,
) -> dict[str, Any]:
    attachment: dict[str, Any] = {"id": attachment_id, "filename": filename, "size": size, "url": url, "proxy_url": url}
    if content_type is not None:
        attachment["content_type"] = content_type
    if width is not None and height is not None:
        attachment["width"], attachment["height"] = width, height
    return attachment


def interaction_payload(
    *,
    interaction_id: str,
    token: str,
    application_id: str,
    kind: int,
    data: dict[str, Any],
    user: FakeUser,
    channel: FakeChannel,
    guild: FakeGuild | None,
    message: dict[str, Any] | None = None,
    attachment_size_limit: int = DISCORD_DEFAULT_UPLOAD_LIMIT_BYTES,
) -> dict[str, Any]:
    """An INTERACTION_CREATE body; a guild interaction carries `member`, a DM one `user`."""
    payload: dict[str, Any] = {
        "id": interaction_id,
        "application_id": application_id,
        "type": kind,
        "data": data,
        "channel": channel.payload(),
        "channel_id": channel.id,
        "token": token,
        "version": 1,
        "app_permissions": ALL_PERMISSIONS,
        "locale": user.locale,
        "entitlements": [],
        "attachment_size_limit": attachment_size_limit,
    }
    if guild is not None:
        payload |= {
            "guild_id": guild.id,
            "guild": {"id": guild.id, "locale": "en-US", "features": []},
            "guild_locale": "en-US",
            "member": user.member_payload(guild.joined_at),
            "authorizing_integration_owners": {"0": guild.id},
            "context": 0,
        }
    else:
        payload |= {"user": user.payload(), "authorizing_integration_owners": {"1": user.id}, "context": 1}
    if message is not None:
        payload["message"] = message
    return payload


def interaction_metadata(*, interaction_id: str, kind: int, user: FakeUser) -> dict[str, Any]:
    return {"id": interaction_id, "type": kind, "user": user.payload(), "authorizing_integration_owners": {}}
