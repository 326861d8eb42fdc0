"""Messages and attachment bytes the fake Discord holds, so that edits, fetches, button clicks and
CDN downloads all see the same state the bot created.

Create and edit bodies name their attachments the way discord.py sends them: an `attachments`
list whose ids are either ids of attachments the message already has (kept) or the index `n`
of an uploaded `files[n]` part (new). Attachments left out of an edit's list are removed.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Callable
from typing import Any

import yarl

from . import discord_payloads as dp
from .recording import UploadedFile

CDN_PREFIX = "/cdn/attachments"


class MessageStore:
    def __init__(
        self, *, ids: dp.SnowflakeFactory, base_url: Callable[[], str], bot_user: dp.FakeUser, application_id: str
    ) -> None:
        self._ids = ids
        self._base_url = base_url  # the port is known only once the server listens
        self._bot_user = bot_user
        self._application_id = application_id
        self.messages: dict[str, dict[str, Any]] = {}
        self._cdn: dict[str, tuple[bytes, str]] = {}

    def store_attachment(
        self,
        filename: str,
        data: bytes,
        *,
        content_type: str | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> dict[str, Any]:
        """Put bytes on the CDN; returns the attachment object with a signed-looking URL."""
        attachment_id = self._ids()
        path = f"{CDN_PREFIX}/{attachment_id}/{filename}"
        self._cdn[path] = (data, content_type or "application/octet-stream")
        return dp.attachment_payload(
            attachment_id=attachment_id,
            filename=filename,
            size=len(data),
            url=self._base_url() + path + "?ex=fake&is=fake&hm=fake",
            content_type=content_type,
            width=width,
            height=height,
        )

    def cdn_file(self, path: str) -> tuple[bytes, str] | None:
        return self._cdn.get(path)

    def cdn_bytes(self, url: str) -> bytes:
        return self._cdn[yarl.URL(url).path][0]

    def create(
        self,
        channel: dp.FakeChannel,
        data: dict[str, Any],
        files: tuple[UploadedFile, ...],
        *,
        flags: int,
        interaction_metadata: dict[str, Any] | None = None,
        reference: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A new message by the bot (an interaction response when `interaction_metadata` is set)."""
        message = dp.message_payload(
            message_id=self._ids(),
            channel=channel,
            author=self._bot_user,
            content=data.get("content") or "",
            attachments=self._attachments_from(data, files, []),
            embeds=data.get("embeds"),
            components=data.get("components"),
            flags=flags,
            application_id=self._application_id,
            interaction_metadata=interaction_metadata,
            message_reference=reference,
        )
        self.messages[message["id"]] = message
        return message

    def edit(self, message: dict[str, Any], data: dict[str, Any], files: tuple[UploadedFile, ...]) -> dict[str, Any]:
        """Apply an edit body: keys present replace the old values (null clears them)."""
        for key, empty in (("content", ""), ("embeds", []), ("components", [])):
            if key in data:
                message[key] = data[key] if data[key] is not None else empty
        if "attachments" in data or files:
            message["attachments"] = self._attachments_from(data, files, message["attachments"])
        message["edited_timestamp"] = dp.timestamp_now()
        return message

    def _attachments_from(
        self, data: dict[str, Any], files: tuple[UploadedFile, ...], kept: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        by_field = {f.field: f for f in files}
        kept_by_id = {a["id"]: a for a in kept}
        result = []
        for item in data.get("attachments", [{"id": str(i)} for i in range(len(files))]):
            item_id = str(item["id"])
            if item_id in kept_by_id:
                result.append(kept_by_id[item_id])
            elif (upload := by_field.get(f"files[{item_id}]")) is not None:
                filename = item.get("filename") or upload.filename
                # discord.py uploads everything as octet-stream; Discord infers the type from the name.
                content_type = mimetypes.guess_type(filename)[0] or upload.content_type
                result.append(self.store_attachment(filename, upload.data, content_type=content_type))
        return result
