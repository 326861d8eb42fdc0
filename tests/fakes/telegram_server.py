"""A fake Telegram Bot API (bot methods, long polling, file downloads) on 127.0.0.1.

python-telegram-bot reaches it through `ApplicationBuilder().base_url(...).base_file_url(...)`
(see `fixtures.telegram_app_builder`). The test plays the users: it queues updates (text,
commands, photos, documents, albums, button presses) that the bot fetches with getUpdates, and
asserts on the recorded calls. The fake keeps chats, messages and files, so it answers the way the
Bot API does for the usual mistakes: "message is not modified", unknown chat or message, a
callback query answered twice, downloads over 20 MB, uploads over the configured limit (413).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .recording import FILES, PARAMS, LoopbackServer, UploadedFile, json_response, read_multipart

CLOUD_UPLOAD_LIMIT_BYTES = 50 * 1000 * 1000
PHOTO_UPLOAD_LIMIT_BYTES = 10 * 1000 * 1000
DOWNLOAD_LIMIT_BYTES = 20 * 1000 * 1000

# Parameters the Bot API reads as strings even when they look like JSON ("123" stays text).
_STRING_PARAMS = frozenset(
    {"text", "caption", "callback_query_id", "file_id", "action", "parse_mode", "url", "filename"}
)
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are exactly the same"
    " as a current content and reply markup of the message"
)
_MEDIA_KINDS = {"sendPhoto": "photo", "sendVideo": "video", "sendDocument": "document", "sendAnimation": "animation"}


def telegram_error(status: int, description: str, *, retry_after_s: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if retry_after_s is not None:
        body["parameters"] = {"retry_after": retry_after_s}
    return body


def _error(status: int, description: str) -> web.Response:
    return json_response(telegram_error(status, description), status=status)


def _ok(result: Any) -> web.Response:
    return json_response({"ok": True, "result": result})


@dataclass
class TelegramUser:
    id: int
    first_name: str
    username: str
    language_code: str = "en"

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "is_bot": False,
            "first_name": self.first_name,
            "username": self.username,
            "language_code": self.language_code,
        }

    def private_chat(self) -> dict[str, Any]:
        return {"id": self.id, "type": "private", "first_name": self.first_name, "username": self.username}


@dataclass
class StoredFile:
    file_id: str
    file_unique_id: str
    data: bytes
    file_path: str
    mime_type: str


@dataclass
class FileRef:
    """What the test hands to `send_photo` etc.: bytes plus what Telegram reports about them."""

    data: bytes
    mime_type: str = "image/jpeg"
    file_name: str | None = None
    width: int = 640
    height: int = 480


@dataclass
class _Polling:
    updates: list[dict[str, Any]] = field(default_factory=list)
    next_update_id: int = 1
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    is_closing: bool = False

    def push(self, update: dict[str, Any]) -> dict[str, Any]:
        update = {"update_id": self.next_update_id} | update
        self.next_update_id += 1
        self.updates.append(update)
        self.arrived.set()
        self.arrived = asyncio.Event()
        return update


class FakeTelegram(LoopbackServer):
    def __init__(
        self, *, token: str = "123456:FAKE-telegram-token", upload_limit_bytes: int = CLOUD_UPLOAD_LIMIT_BYTES
    ) -> None:
        super().__init__()
        self.token = token
        self.upload_limit_bytes = upload_limit_bytes
        bot_id = int(token.split(":")[0])
        self.bot_user = {
            "id": bot_id,
            "is_bot": True,
            "first_name": "Duet",
            "username": "duet_test_bot",
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self._user_ids = itertools.count(1001)
        self._chat_ids = itertools.count(-1001)
        self._file_ids = itertools.count(1)
        self._query_ids = itertools.count(1)
        self.chats: dict[int, dict[str, Any]] = {}
        self.user = self.add_user("Alice", username="alice")
        self.messages: dict[tuple[int, int], dict[str, Any]] = {}
        self.files: dict[str, StoredFile] = {}
        self.commands: list[dict[str, Any]] = []
        self.callback_queries: dict[str, bool] = {}  # query id -> answered yet (a bot must answer every one)
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._polling = _Polling()

    @property
    def api_base_url(self) -> str:
        return self.base_url + "/bot"

    @property
    def file_base_url(self) -> str:
        return self.base_url + "/file/bot"

    # -- the human side ---------------------------------------------------------------------

    def add_user(self, first_name: str, *, username: str | None = None, language_code: str = "en") -> TelegramUser:
        user = TelegramUser(
            id=next(self._user_ids),
            first_name=first_name,
            username=username or first_name.lower(),
            language_code=language_code,
        )
        self.chats[user.id] = user.private_chat()
        return user

    def add_group(self, title: str) -> dict[str, Any]:
        chat = {"id": next(self._chat_ids), "type": "group", "title": title}
        self.chats[chat["id"]] = chat
        return chat

    def store_file(self, ref: FileRef, *, folder: str) -> StoredFile:
        """Register bytes as a Telegram file (what getFile and the download route serve)."""
        number = next(self._file_ids)
        suffix = (
            ref.file_name.rsplit(".", 1)[-1] if ref.file_name and "." in ref.file_name else ref.mime_type.split("/")[-1]
        )
        stored = StoredFile(
            file_id=f"F{number:04d}{secrets.token_hex(6)}",
            file_unique_id=f"U{number:04d}",
            data=ref.data,
            file_path=f"{folder}/file_{number}.{suffix}",
            mime_type=ref.mime_type,
        )
        self.files[stored.file_id] = stored
        return stored

    def send_text(
        self, text: str, *, user: TelegramUser | None = None, chat: dict[str, Any] | None = None, **extra: Any
    ) -> dict[str, Any]:
        """Queue a text message from `user` (to the bot's private chat unless `chat` is given)."""
        return self._user_message(user, chat, {"text": text} | extra)

    def send_command(
        self, command: str, args: str = "", *, user: TelegramUser | None = None, chat: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        text = f"/{command}" + (f" {args}" if args else "")
        entity = {"type": "bot_command", "offset": 0, "length": len(command) + 1}
        return self._user_message(user, chat, {"text": text, "entities": [entity]})

    def send_photo(
        self,
        photo: FileRef,
        *,
        caption: str | None = None,
        user: TelegramUser | None = None,
        chat: dict[str, Any] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Queue a compressed photo. Telegram sends a list of sizes, largest last; the fake sends only
        that largest one, so a bot must read `photo[-1]` exactly as it must against Telegram."""
        return self._user_message(user, chat, {"photo": self._photo_sizes(photo)} | _caption(caption) | extra)

    def send_document(
        self,
        document: FileRef,
        *,
        caption: str | None = None,
        user: TelegramUser | None = None,
        chat: dict[str, Any] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Queue a file sent "as file" (original bytes, with a file name and MIME type)."""
        stored = self.store_file(document, folder="documents")
        return self._user_message(
            user, chat, {"document": self._document(stored, document)} | _caption(caption) | extra
        )

    def send_album(
        self,
        photos: list[FileRef],
        *,
        caption: str | None = None,
        user: TelegramUser | None = None,
        chat: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Queue an album: one update per photo sharing a media_group_id; the caption rides on the first."""
        group_id = str(10**17 + next(self._file_ids))
        return [
            self.send_photo(
                photo, caption=caption if index == 0 else None, user=user, chat=chat, media_group_id=group_id
            )
            for index, photo in enumerate(photos)
        ]

    def press_button(self, message: dict[str, Any], callback_data: str, *, user: TelegramUser | None = None) -> str:
        """Queue a callback query for an inline button the bot put on `message`; returns its id."""
        current = self.messages[(message["chat"]["id"], message["message_id"])]
        rows = current.get("reply_markup", {}).get("inline_keyboard", [])
        if not any(button.get("callback_data") == callback_data for row in rows for button in row):
            raise LookupError(f"message {message['message_id']} has no button with callback_data {callback_data!r}")
        query_id = f"{next(self._query_ids)}{secrets.token_hex(4)}"
        self.callback_queries[query_id] = False
        sender = user or self.user
        query = {
            "id": query_id,
            "from": sender.payload(),
            "chat_instance": str(current["chat"]["id"]),
            "data": callback_data,
            "message": current,
        }
        self._polling.push({"callback_query": query})
        return query_id

    def sent_messages(self, chat_id: int | None = None) -> list[dict[str, Any]]:
        """Messages the bot has sent (as currently stored: edits applied, deletions gone)."""
        return [
            m for (c, _), m in self.messages.items() if m["from"]["id"] == self.bot_user["id"] and chat_id in (None, c)
        ]

    def rate_limit_next(self, method: str, *, retry_after_s: int = 1, times: int = 1) -> None:
        """Answer the next `times` calls of `method` with a flood-control 429."""
        body = telegram_error(429, f"Too Many Requests: retry after {retry_after_s}", retry_after_s=retry_after_s)
        self.fail_next(method, 429, body, headers={"Retry-After": str(retry_after_s)}, times=times)

    def fail_method(self, method: str, status: int, description: str, *, times: int = 1) -> None:
        """Answer the next `times` calls of `method` with a Bot API error (e.g. 403 bot was blocked)."""
        self.fail_next(method, status, telegram_error(status, description), times=times)

    # -- server -----------------------------------------------------------------------------

    def _routes(self) -> list[web.RouteDef]:
        return [
            web.route("*", "/bot{token}/{method}", self._api_call),
            web.get("/file/bot{token}/{file_path:.+}", self._download),
        ]

    def _route_name(self, request: web.Request) -> str | None:
        return request.match_info.get("method")

    async def _parse(self, request: web.Request) -> tuple[Any, tuple[UploadedFile, ...]]:
        files: tuple[UploadedFile, ...] = ()
        if request.content_type == "multipart/form-data":
            fields, files = await read_multipart(request)
        elif request.content_type == "application/json":
            return await request.json(), ()
        elif request.can_read_body:
            fields = {k: str(v) for k, v in (await request.post()).items()}
        else:
            fields = dict(request.query)
        return {name: _decode_param(name, value) for name, value in fields.items()}, files

    def _reject(self, request: web.Request, route: str) -> web.Response | None:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        limit = PHOTO_UPLOAD_LIMIT_BYTES if route == "sendPhoto" else self.upload_limit_bytes
        if any(f.size_bytes > limit for f in request[FILES]):
            return _error(413, "Request Entity Too Large")
        return None

    async def _before_close(self) -> None:
        self._polling.is_closing = True
        self._polling.arrived.set()

    async def _api_call(self, request: web.Request) -> web.Response:
        method, params = request.match_info["method"], request[PARAMS]
        handler = getattr(self, f"_m_{method}", None)
        if handler is None and method not in _MEDIA_KINDS and method != "sendMediaGroup":
            return _error(404, "Not Found")
        if "chat_id" in params and params["chat_id"] not in self.chats:
            return _error(400, "Bad Request: chat not found")
        uploads = {f.field: f for f in request[FILES]}
        if method == "sendMediaGroup":
            return self._send_media_group(params, uploads)
        if method in _MEDIA_KINDS:
            return self._send_media(params, uploads, _MEDIA_KINDS[method])
        return await handler(params)

    async def _download(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        stored = next((f for f in self.files.values() if f.file_path == request.match_info["file_path"]), None)
        if stored is None:
            return web.Response(status=404)
        return web.Response(body=stored.data, content_type=stored.mime_type)

    # -- Bot API methods ----------------------------------------------------------------------

    async def _m_getMe(self, params: dict[str, Any]) -> web.Response:
        return _ok(self.bot_user)

    async def _m_deleteWebhook(self, params: dict[str, Any]) -> web.Response:
        if params.get("drop_pending_updates"):
            self._polling.updates.clear()
        return _ok(True)

    async def _m_setMyCommands(self, params: dict[str, Any]) -> web.Response:
        self.commands = params["commands"]
        return _ok(True)

    async def _m_getMyCommands(self, params: dict[str, Any]) -> web.Response:
        return _ok(self.commands)

    async def _m_getUpdates(self, params: dict[str, Any]) -> web.Response:
        """Long poll: confirm updates below `offset`, answer at once if any remain, else wait."""
        polling = self._polling
        offset = int(params.get("offset") or 0)
        if offset:
            polling.updates = [u for u in polling.updates if u["update_id"] >= offset]
        deadline = time.monotonic() + float(params.get("timeout") or 0)
        while not polling.updates and not polling.is_closing and (remaining := deadline - time.monotonic()) > 0:
            arrived = polling.arrived
            try:
                await asyncio.wait_for(arrived.wait(), remaining)
            except TimeoutError:
                break
        return _ok(polling.updates[: int(params.get("limit") or 100)])

    async def _m_sendMessage(self, params: dict[str, Any]) -> web.Response:
        if not str(params.get("text", "")).strip():
            return _error(400, "Bad Request: message text is empty")
        if len(params["text"]) > 4096:
            return _error(400, "Bad Request: message is too long")
        return self._bot_message(params, {"text": params["text"]})

    async def _m_editMessageText(self, params: dict[str, Any]) -> web.Response:
        return self._edit(params, {"text": params.get("text")})

    async def _m_editMessageCaption(self, params: dict[str, Any]) -> web.Response:
        return self._edit(params, {"caption": params.get("caption")})

    async def _m_editMessageReplyMarkup(self, params: dict[str, Any]) -> web.Response:
        return self._edit(params, {})

    async def _m_deleteMessage(self, params: dict[str, Any]) -> web.Response:
        if self.messages.pop((params["chat_id"], params["message_id"]), None) is None:
            return _error(400, "Bad Request: message to delete not found")
        return _ok(True)

    async def _m_answerCallbackQuery(self, params: dict[str, Any]) -> web.Response:
        if self.callback_queries.get(params["callback_query_id"], True):
            return _error(400, "Bad Request: query is too old and response timeout expired or query ID is invalid")
        self.callback_queries[params["callback_query_id"]] = True
        return _ok(True)

    async def _m_sendChatAction(self, params: dict[str, Any]) -> web.Response:
        return _ok(True)

    async def _m_getFile(self, params: dict[str, Any]) -> web.Response:
        stored = self.files.get(params.get("file_id", ""))
        if stored is None:
            return _error(400, "Bad Request: invalid file_id")
        if len(stored.data) > DOWNLOAD_LIMIT_BYTES:
            return _error(400, "Bad Request: file is too big")
        return _ok(
            {
                "file_id": stored.file_id,
                "file_unique_id": stored.file_unique_id,
                "file_size": len(stored.data),
                "file_path": stored.file_path,
            }
        )

    def _send_media(self, params: dict[str, Any], uploads: dict[str, UploadedFile], kind: str) -> web.Response:
        """sendPhoto/sendVideo/sendDocument/sendAnimation with an upload or an existing file_id."""
        media = self._media(kind, params.get(kind), uploads, params)
        if media is None:
            return _error(400, f"Bad Request: there is no {kind} in the request")
        return self._bot_message(params, {kind: media} | _caption(params.get("caption")))

    def _send_media_group(self, params: dict[str, Any], uploads: dict[str, UploadedFile]) -> web.Response:
        """An album: one message per item, sharing a media_group_id; answered with the list."""
        items = params.get("media") or []
        if not 2 <= len(items) <= 10:
            return _error(400, "Bad Request: a media group must have 2 to 10 items")
        group_id = str(10**17 + next(self._file_ids))
        bodies = []
        for item in items:
            media = self._media(item["type"], item.get("media"), uploads, item)
            if media is None:
                return _error(400, "Bad Request: wrong file identifier/HTTP URL specified")
            bodies.append({item["type"]: media, "media_group_id": group_id} | _caption(item.get("caption")))
        return self._bot_messages(params, bodies)

    def _media(self, kind: str, value: Any, uploads: dict[str, UploadedFile], params: dict[str, Any]) -> Any:
        """The message field for one sent file, or None when the request names none we know.

        The file is an upload part named after the parameter (PTB's way for a top-level file), an
        `attach://<part>` reference, or the file_id of a file Telegram already has.
        """
        upload = uploads.get(kind) if value is None else None
        if isinstance(value, str) and value.startswith("attach://"):
            upload = uploads.get(value.removeprefix("attach://"))
        if upload is not None:
            ref = FileRef(upload.data, mime_type=upload.content_type, file_name=upload.filename)
            stored = self.store_file(ref, folder=kind + "s")
        elif isinstance(value, str) and value in self.files:
            stored = self.files[value]
        else:
            return None
        ref = FileRef(stored.data, mime_type=stored.mime_type, file_name=upload.filename if upload else None)
        if kind == "photo":
            return self._photo_sizes(ref, stored)
        media = self._document(stored, ref)
        if kind in ("video", "animation"):
            media |= {key: int(params.get(key) or 0) for key in ("width", "height", "duration")}
        return media

    # -- helpers ------------------------------------------------------------------------------

    def _next_message_id(self, chat_id: int) -> int:
        return next(self._message_ids.setdefault(chat_id, itertools.count(1)))

    def _user_message(
        self, user: TelegramUser | None, chat: dict[str, Any] | None, body: dict[str, Any]
    ) -> dict[str, Any]:
        sender = user or self.user
        chat = chat or sender.private_chat()
        message = {
            "message_id": self._next_message_id(chat["id"]),
            "date": int(time.time()),
            "chat": chat,
            "from": sender.payload(),
        } | body
        self.messages[(chat["id"], message["message_id"])] = message
        self._polling.push({"message": message})
        return message

    def _bot_message(self, params: dict[str, Any], body: dict[str, Any]) -> web.Response:
        return self._bot_messages(params, [body], as_list=False)

    def _bot_messages(
        self, params: dict[str, Any], bodies: list[dict[str, Any]], *, as_list: bool = True
    ) -> web.Response:
        """Store what the bot sent to `params["chat_id"]`, honouring reply_parameters and reply_markup."""
        chat = self.chats[params["chat_id"]]
        reply_to = (params.get("reply_parameters") or {}).get("message_id") or params.get("reply_to_message_id")
        replied = None if reply_to is None else self.messages.get((chat["id"], int(reply_to)))
        if reply_to is not None and replied is None:
            return _error(400, "Bad Request: message to be replied not found")
        sent = []
        for body in bodies:
            message: dict[str, Any] = {
                "message_id": self._next_message_id(chat["id"]),
                "date": int(time.time()),
                "chat": chat,
                "from": self.bot_user,
            } | body
            if replied is not None:
                message["reply_to_message"] = replied
            if params.get("reply_markup"):
                message["reply_markup"] = params["reply_markup"]
            self.messages[(chat["id"], message["message_id"])] = message
            sent.append(message)
        return _ok(sent if as_list else sent[0])

    def _edit(self, params: dict[str, Any], changes: dict[str, Any]) -> web.Response:
        message = self.messages.get((params.get("chat_id"), params.get("message_id")))
        if message is None:
            return _error(400, "Bad Request: message to edit not found")
        if message["from"]["id"] != self.bot_user["id"]:
            return _error(400, "Bad Request: message can't be edited")
        new_markup = params.get("reply_markup") or None
        if all(message.get(k) == v for k, v in changes.items()) and message.get("reply_markup") == new_markup:
            return _error(400, NOT_MODIFIED)
        message.update(changes)
        if new_markup is None:
            message.pop("reply_markup", None)
        else:
            message["reply_markup"] = new_markup
        message["edit_date"] = int(time.time())
        return _ok(message)

    def _photo_sizes(self, photo: FileRef, stored: StoredFile | None = None) -> list[dict[str, Any]]:
        stored = stored or self.store_file(photo, folder="photos")
        return [
            {
                "file_id": stored.file_id,
                "file_unique_id": stored.file_unique_id,
                "width": photo.width,
                "height": photo.height,
                "file_size": len(stored.data),
            }
        ]

    @staticmethod
    def _document(stored: StoredFile, ref: FileRef) -> dict[str, Any]:
        document = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "mime_type": stored.mime_type,
            "file_size": len(stored.data),
        }
        if ref.file_name:
            document["file_name"] = ref.file_name
        return document


def _caption(caption: str | None) -> dict[str, Any]:
    return {"caption": caption} if caption else {}


def _decode_param(name: str, value: str) -> Any:
    """Form values arrive as text; the Bot API parses non-string parameters as JSON."""
    if name in _STRING_PARAMS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value
