"""A fake Discord (REST API v10, gateway websocket and attachment CDN) on 127.0.0.1.

The real discord.py connects to it through its own seams (see `fixtures.point_discord_py_at`):
`discord.http.Route.BASE` for REST and interaction webhooks, and
`DiscordWebSocket.DEFAULT_GATEWAY` for the websocket (a plain `Client` never asks /gateway/bot).

The test plays the human: it uploads attachments to the fake CDN, runs slash commands, clicks
buttons and submits modals; the fake turns those into INTERACTION_CREATE events built from what
the bot registered and sent (command schemas, message components, modal layouts), so a test
cannot click a button the bot never showed. The fake keeps messages, so edits, follow-ups and
fetches behave like Discord, including its error codes for the usual mistakes (answering an
interaction twice, editing an unknown message). Flat slash commands only: no subcommands.
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import discord_interactions as actions
from . import discord_payloads as dp
from .discord_gateway import FakeGateway
from .discord_messages import CDN_PREFIX, MessageStore
from .recording import FILES, PARAMS, LoopbackServer, UploadedFile, json_response, read_multipart

API_PREFIX = "/api/v10"
# Route names as recorded (method + Discord's path template).
ROUTE_CALLBACK = "POST /interactions/{interaction_id}/{interaction_token}/callback"
ROUTE_EDIT_ORIGINAL = "PATCH /webhooks/{application_id}/{interaction_token}/messages/{message_id}"
ROUTE_FOLLOWUP = "POST /webhooks/{application_id}/{interaction_token}"
ROUTE_CREATE_MESSAGE = "POST /channels/{channel_id}/messages"
ROUTE_EDIT_MESSAGE = "PATCH /channels/{channel_id}/messages/{message_id}"
ROUTE_TYPING = "POST /channels/{channel_id}/typing"
ROUTE_GLOBAL_COMMANDS = "PUT /applications/{application_id}/commands"
ROUTE_GUILD_COMMANDS = "PUT /applications/{application_id}/guilds/{guild_id}/commands"


def discord_error(status: int, code: int, message: str) -> web.Response:
    return json_response({"message": message, "code": code}, status=status)


@dataclass
class FakeInteraction:
    """An interaction the test started, and what the bot has done with it so far."""

    id: str
    token: str
    kind: int
    user: dp.FakeUser
    channel: dp.FakeChannel
    payload: dict[str, Any]
    source_message_id: str | None = None
    callback_type: int | None = None
    original_message_id: str | None = None
    modal: dict[str, Any] | None = None
    is_expired: bool = False


class FakeDiscord(LoopbackServer):
    def __init__(self, *, token: str = "fake-discord-token", application_id: str | None = None) -> None:
        super().__init__()
        self.token = token
        self._ids = dp.SnowflakeFactory()
        self.application_id = application_id or self._ids()
        self.bot_user = dp.FakeUser(id=self.application_id, username="duet-bot", is_bot=True)
        self.user = dp.FakeUser(id=self._ids(), username="alice")
        self.channel = dp.FakeChannel(id=self._ids(), kind=dp.CHANNEL_GUILD_TEXT, name="general")
        self.guild = dp.FakeGuild(
            id=self._ids(),
            name="Duet Test Guild",
            owner=self.user,
            channels=[self.channel],
            members=[self.user, self.bot_user],
        )
        self.channel.guild_id = self.guild.id
        self.channels: dict[str, dp.FakeChannel] = {self.channel.id: self.channel}
        self.store = MessageStore(
            ids=self._ids, base_url=lambda: self.base_url, bot_user=self.bot_user, application_id=self.application_id
        )
        self.messages = self.store.messages
        self.gateway = FakeGateway(token=token, opening_events=self._opening_events)
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: dict[str, list[dict[str, Any]]] = {}
        self.interactions: dict[str, FakeInteraction] = {}
        self.upload_limit_bytes = dp.DISCORD_DEFAULT_UPLOAD_LIMIT_BYTES

    # -- where the client connects ---------------------------------------------------------

    @property
    def api_base(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway/"

    # -- the human side: what a test does --------------------------------------------------

    def add_user(self, username: str, *, locale: str = "en-US") -> dp.FakeUser:
        """Another guild member (e.g. someone who tries to press the owner's Cancel button)."""
        user = dp.FakeUser(id=self._ids(), username=username, locale=locale)
        self.guild.members.append(user)
        return user

    def dm_channel(self, user: dp.FakeUser) -> dp.FakeChannel:
        """The bot's DM channel with `user`, created on first use as Discord does."""
        for channel in self.channels.values():
            if channel.kind == dp.CHANNEL_DM and channel.recipient is user:
                return channel
        channel = dp.FakeChannel(id=self._ids(), kind=dp.CHANNEL_DM, name="", recipient=user)
        self.channels[channel.id] = channel
        return channel

    def upload_attachment(
        self,
        filename: str,
        data: bytes,
        *,
        content_type: str | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> dict[str, Any]:
        """Put bytes on the fake CDN as a user upload; returns the attachment object to pass as an option value."""
        return self.store.store_attachment(filename, data, content_type=content_type, width=width, height=height)

    async def run_slash_command(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        user: dp.FakeUser | None = None,
        channel: dp.FakeChannel | None = None,
    ) -> FakeInteraction:
        """Dispatch an APPLICATION_COMMAND interaction for a command the bot registered.

        Option values are plain Python values; an attachment option takes the dict from
        `upload_attachment` and a user option a `FakeUser`, and both are added to `resolved`.
        """
        channel = channel or self.channel
        command = self._registered_command(name, guild_scoped=channel.guild_id is not None)
        data = actions.slash_command_data(command, options or {}, joined_at=self.guild.joined_at)
        return await self._dispatch_interaction(dp.INTERACTION_APPLICATION_COMMAND, data, user=user, channel=channel)

    async def autocomplete(
        self, name: str, options: dict[str, Any], focused: str, *, user: dp.FakeUser | None = None
    ) -> FakeInteraction:
        """The user typing into option `focused` of /`name`; the bot should answer with choices."""
        data = actions.autocomplete_data(self._registered_command(name, guild_scoped=True), options, focused)
        return await self._dispatch_interaction(dp.INTERACTION_AUTOCOMPLETE, data, user=user, channel=self.channel)

    async def click_button(
        self, message_id: str, custom_id: str, *, user: dp.FakeUser | None = None
    ) -> FakeInteraction:
        """Press a button the bot put on `message_id` (it must be there and enabled)."""
        data = actions.button_data(self.messages[message_id], custom_id)
        return await self._component_interaction(message_id, data, user)

    async def choose_options(
        self, message_id: str, custom_id: str, values: list[str], *, user: dp.FakeUser | None = None
    ) -> FakeInteraction:
        """Pick `values` in a string select menu the bot put on `message_id`."""
        data = actions.select_data(self.messages[message_id], custom_id, values)
        return await self._component_interaction(message_id, data, user)

    async def submit_modal(
        self, shown_by: FakeInteraction, values: dict[str, str], *, user: dp.FakeUser | None = None
    ) -> FakeInteraction:
        """Fill in and submit the modal the bot opened in answer to `shown_by`.

        `values` maps text-input custom ids to the typed text; inputs left out are submitted empty.
        """
        if shown_by.modal is None:
            raise LookupError(f"interaction {shown_by.id} was not answered with a modal")
        data = actions.modal_submit_data(shown_by.modal, values)
        source = self.messages.get(shown_by.source_message_id or "")
        return await self._dispatch_interaction(
            dp.INTERACTION_MODAL_SUBMIT, data, user=user or shown_by.user, channel=shown_by.channel, message=source
        )

    async def wait_for_response(self, interaction: FakeInteraction, timeout: float = 5.0) -> dict[str, Any]:
        """The bot's initial response (callback body) to `interaction`."""
        call = await self.wait_for_call(
            lambda c: c.route == ROUTE_CALLBACK and c.path.split("/")[4] == interaction.id and c.status < 300,
            timeout=timeout,
        )
        return call.params

    def expire_interaction(self, interaction: FakeInteraction) -> None:
        """Make its token invalid, as Discord does after 15 minutes (or 3 s without an answer)."""
        interaction.is_expired = True

    def rate_limit_next(
        self, route: str, *, retry_after_s: float = 0.25, is_global: bool = False, times: int = 1
    ) -> None:
        """Answer the next `times` calls of `route` with 429, headers and body like Discord's."""
        body = {"message": "You are being rate limited.", "retry_after": retry_after_s, "global": is_global}
        headers = {
            "Via": "1.1 google",  # without it discord.py assumes a Cloudflare ban and gives up
            "Retry-After": str(math.ceil(retry_after_s)),
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset-After": str(retry_after_s),
            "X-RateLimit-Bucket": "fake-bucket",
            "X-RateLimit-Scope": "global" if is_global else "user",
        }
        if is_global:
            headers["X-RateLimit-Global"] = "true"
        self.fail_next(route, 429, body, headers=headers, times=times)

    def fail_route(self, route: str, status: int, code: int, message: str, *, times: int = 1) -> None:
        """Answer the next `times` calls of `route` with a Discord JSON error (e.g. 50007, 30046)."""
        self.fail_next(route, status, {"message": message, "code": code}, times=times)

    # -- server -----------------------------------------------------------------------------

    def _routes(self) -> list[web.RouteDef]:
        api = API_PREFIX
        return [
            web.get("/gateway/", self.gateway.handle),
            web.get(CDN_PREFIX + "/{attachment_id}/{filename}", self._cdn_file),
            web.get(api + "/gateway", self._gateway_info),
            web.get(api + "/gateway/bot", self._gateway_info),
            web.get(api + "/users/@me", self._me),
            web.get(api + "/oauth2/applications/@me", self._application),
            web.put(api + "/applications/{application_id}/commands", self._put_commands),
            web.get(api + "/applications/{application_id}/commands", self._get_commands),
            web.put(api + "/applications/{application_id}/guilds/{guild_id}/commands", self._put_commands),
            web.get(api + "/applications/{application_id}/guilds/{guild_id}/commands", self._get_commands),
            web.post(api + "/interactions/{interaction_id}/{interaction_token}/callback", self._callback),
            web.post(api + "/webhooks/{application_id}/{interaction_token}", self._followup),
            web.get(
                api + "/webhooks/{application_id}/{interaction_token}/messages/{message_id}", self._webhook_message
            ),
            web.patch(
                api + "/webhooks/{application_id}/{interaction_token}/messages/{message_id}", self._webhook_message
            ),
            web.delete(
                api + "/webhooks/{application_id}/{interaction_token}/messages/{message_id}", self._webhook_message
            ),
            web.get(api + "/channels/{channel_id}", self._get_channel),
            web.get(api + "/channels/{channel_id}/messages", self._list_messages),
            web.post(api + "/channels/{channel_id}/messages", self._create_message),
            web.get(api + "/channels/{channel_id}/messages/{message_id}", self._get_message),
            web.patch(api + "/channels/{channel_id}/messages/{message_id}", self._edit_message),
            web.delete(api + "/channels/{channel_id}/messages/{message_id}", self._delete_message),
            web.post(api + "/channels/{channel_id}/typing", self._typing),
            web.post(api + "/users/@me/channels", self._create_dm),
            web.get(api + "/users/{user_id}", self._get_user),
            web.route("*", api + "/{tail:.*}", self._unknown_route),
        ]

    def _route_name(self, request: web.Request) -> str | None:
        if not request.path.startswith(API_PREFIX):
            return None
        canonical = request.match_info.route.resource.canonical if request.match_info.route.resource else request.path
        return f"{request.method} {canonical.removeprefix(API_PREFIX)}"

    async def _parse(self, request: web.Request) -> tuple[Any, tuple[UploadedFile, ...]]:
        if request.content_type == "multipart/form-data":
            fields, files = await read_multipart(request)
            return json.loads(fields.get("payload_json", "null")), files
        if request.can_read_body:
            return json.loads(await request.read() or b"null"), ()
        return None, ()

    def _reject(self, request: web.Request, route: str) -> web.Response | None:
        if too_big := [f.filename for f in request[FILES] if f.size_bytes > self.upload_limit_bytes]:
            return discord_error(413, 40005, f"Request entity too large: {too_big}")
        # Interaction callbacks and webhooks are authorised by the token in their path.
        is_token_route = " /interactions/" in route or " /webhooks/" in route or route.startswith("GET /gateway")
        if not is_token_route and request.headers.get("Authorization") != f"Bot {self.token}":
            return discord_error(401, 0, "401: Unauthorized")
        return None

    async def _before_close(self) -> None:
        await self.gateway.close()

    def _opening_events(self, session_id: str) -> list[tuple[str, dict[str, Any]]]:
        ready = {
            "v": 10,
            "user": self.bot_user.payload(),
            "guilds": [{"id": self.guild.id, "unavailable": True}],
            "session_id": session_id,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": self.application_id, "flags": 0},
            "private_channels": [],
            "relationships": [],
        }
        return [("READY", ready), ("GUILD_CREATE", self.guild.payload())]

    # -- REST: identity and commands --------------------------------------------------------

    async def _gateway_info(self, request: web.Request) -> web.Response:
        limit = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
        return json_response({"url": self.gateway_url, "shards": 1, "session_start_limit": limit})

    async def _me(self, request: web.Request) -> web.Response:
        return json_response(self.bot_user.payload())

    async def _application(self, request: web.Request) -> web.Response:
        return json_response(
            {
                "id": self.application_id,
                "name": "Duet",
                "description": "",
                "icon": None,
                "bot_public": False,
                "bot_require_code_grant": False,
                "owner": self.user.payload(),
                "verify_key": "00" * 32,
                "flags": 0,
                "bot": self.bot_user.payload(),
                "team": None,
                "summary": "",
            }
        )

    async def _put_commands(self, request: web.Request) -> web.Response:
        guild_id = request.match_info.get("guild_id")
        stored = []
        for command in request[PARAMS]:
            existing = self._find_command(command["name"], guild_id)
            stored.append(
                command
                | {
                    "id": existing["id"] if existing else self._ids(),
                    "application_id": self.application_id,
                    "version": self._ids(),
                    "type": command.get("type", 1),
                    **({"guild_id": guild_id} if guild_id else {}),
                }
            )
        if guild_id:
            self.guild_commands[guild_id] = stored
        else:
            self.global_commands = stored
        return json_response(stored)

    async def _get_commands(self, request: web.Request) -> web.Response:
        guild_id = request.match_info.get("guild_id")
        return json_response(self.guild_commands.get(guild_id, []) if guild_id else self.global_commands)

    def _find_command(self, name: str, guild_id: str | None) -> dict[str, Any] | None:
        commands = self.guild_commands.get(guild_id, []) if guild_id else self.global_commands
        return next((c for c in commands if c["name"] == name), None)

    def _registered_command(self, name: str, *, guild_scoped: bool) -> dict[str, Any]:
        # Guild commands shadow global ones in that guild, as in the Discord client.
        command = (self._find_command(name, self.guild.id) if guild_scoped else None) or self._find_command(name, None)
        if command is None:
            raise LookupError(f"/{name} is not registered (global: {[c['name'] for c in self.global_commands]})")
        return command

    # -- REST: interactions -----------------------------------------------------------------

    async def _dispatch_interaction(
        self,
        kind: int,
        data: dict[str, Any],
        *,
        user: dp.FakeUser | None,
        channel: dp.FakeChannel,
        message: dict[str, Any] | None = None,
    ) -> FakeInteraction:
        user = user or self.user
        guild = self.guild if channel.guild_id else None
        interaction_id, token = self._ids(), "itok-" + secrets.token_urlsafe(24)
        payload = dp.interaction_payload(
            interaction_id=interaction_id,
            token=token,
            application_id=self.application_id,
            kind=kind,
            data=data,
            user=user,
            channel=channel,
            guild=guild,
            message=message,
            attachment_size_limit=self.upload_limit_bytes,
        )
        interaction = FakeInteraction(
            id=interaction_id,
            token=token,
            kind=kind,
            user=user,
            channel=channel,
            payload=payload,
            source_message_id=message["id"] if message else None,
        )
        self.interactions[token] = interaction
        await self.gateway.dispatch("INTERACTION_CREATE", payload)
        return interaction

    async def _component_interaction(
        self, message_id: str, data: dict[str, Any], user: dp.FakeUser | None
    ) -> FakeInteraction:
        message = self.messages[message_id]
        channel = self.channels[message["channel_id"]]
        return await self._dispatch_interaction(
            dp.INTERACTION_MESSAGE_COMPONENT, data, user=user, channel=channel, message=message
        )

    async def _callback(self, request: web.Request) -> web.Response:
        interaction = self.interactions.get(request.match_info["interaction_token"])
        if interaction is None or interaction.id != request.match_info["interaction_id"] or interaction.is_expired:
            return discord_error(404, 10062, "Unknown interaction")
        if interaction.callback_type is not None:
            return discord_error(400, 40060, "Interaction has already been acknowledged.")
        body, files = request[PARAMS], request[FILES]
        kind, data = body["type"], body.get("data") or {}
        if kind == dp.CALLBACK_MODAL and interaction.kind == dp.INTERACTION_MODAL_SUBMIT:
            return discord_error(400, 50035, "Invalid Form Body: a modal cannot answer a modal submit")
        if (kind == dp.CALLBACK_AUTOCOMPLETE_RESULT) != (interaction.kind == dp.INTERACTION_AUTOCOMPLETE):
            return discord_error(400, 50035, "Invalid Form Body: autocomplete is answered with choices, and only it")
        if kind in (dp.CALLBACK_UPDATE_MESSAGE, dp.CALLBACK_DEFERRED_UPDATE) and interaction.source_message_id is None:
            return discord_error(400, 50035, "Invalid Form Body: no message to update")
        interaction.callback_type = kind
        message = None
        if kind in (dp.CALLBACK_MESSAGE, dp.CALLBACK_DEFERRED_MESSAGE):
            flags = data.get("flags", 0) & dp.MESSAGE_FLAG_EPHEMERAL
            if kind == dp.CALLBACK_DEFERRED_MESSAGE:
                data, flags = {}, flags | dp.MESSAGE_FLAG_LOADING
            message = self.store.create(
                interaction.channel, data, files, flags=flags, interaction_metadata=self._metadata(interaction)
            )
            interaction.original_message_id = message["id"]
        elif kind == dp.CALLBACK_UPDATE_MESSAGE:
            message = self.store.edit(self.messages[interaction.source_message_id or ""], data, files)
        elif kind == dp.CALLBACK_MODAL:
            interaction.modal = data
        answer: dict[str, Any] = {
            "interaction": {"id": interaction.id, "type": interaction.kind},
            "resource": {"type": kind},
        }
        if message is not None:
            answer["interaction"] |= {
                "response_message_id": message["id"],
                "response_message_loading": bool(message["flags"] & dp.MESSAGE_FLAG_LOADING),
                "response_message_ephemeral": bool(message["flags"] & dp.MESSAGE_FLAG_EPHEMERAL),
            }
            answer["resource"]["message"] = message
        return json_response(answer)

    def _interaction_for_webhook(self, request: web.Request) -> FakeInteraction | None:
        interaction = self.interactions.get(request.match_info["interaction_token"])
        if interaction is None or interaction.is_expired or request.match_info["application_id"] != self.application_id:
            return None
        return interaction

    async def _followup(self, request: web.Request) -> web.Response:
        interaction = self._interaction_for_webhook(request)
        if interaction is None or interaction.callback_type is None:
            return discord_error(404, 10015, "Unknown Webhook")
        data, files = request[PARAMS], request[FILES]
        original = self.messages.get(interaction.original_message_id or "")
        if original is not None and original["flags"] & dp.MESSAGE_FLAG_LOADING:
            # The first follow-up after a defer replaces the "thinking…" message, keeping its flags.
            message = self.store.edit(original, data, files)
            message["flags"] &= ~dp.MESSAGE_FLAG_LOADING
        else:
            flags = data.get("flags", 0) & dp.MESSAGE_FLAG_EPHEMERAL
            message = self.store.create(
                interaction.channel, data, files, flags=flags, interaction_metadata=self._metadata(interaction)
            )
        if request.query.get("wait") in ("1", "true", "True"):
            return json_response(message)
        return web.Response(status=204)

    async def _webhook_message(self, request: web.Request) -> web.Response:
        interaction = self._interaction_for_webhook(request)
        if interaction is None:
            return discord_error(404, 10015, "Unknown Webhook")
        message_id = request.match_info["message_id"]
        if message_id == "@original":
            message_id = interaction.original_message_id or ""
        message = self.messages.get(message_id)
        if message is None or message.get("interaction_metadata", {}).get("id") != interaction.id:
            return discord_error(404, 10008, "Unknown Message")
        if request.method == "DELETE":
            del self.messages[message_id]
            return web.Response(status=204)
        if request.method == "PATCH":
            self.store.edit(message, request[PARAMS] or {}, request[FILES])
            message["flags"] &= ~dp.MESSAGE_FLAG_LOADING
        return json_response(message)

    # -- REST: channels and messages --------------------------------------------------------

    def _channel_or_error(self, request: web.Request) -> dp.FakeChannel | web.Response:
        channel = self.channels.get(request.match_info["channel_id"])
        return channel if channel is not None else discord_error(404, 10003, "Unknown Channel")

    async def _get_channel(self, request: web.Request) -> web.Response:
        channel = self._channel_or_error(request)
        return channel if isinstance(channel, web.Response) else json_response(channel.payload())

    async def _create_message(self, request: web.Request) -> web.Response:
        channel = self._channel_or_error(request)
        if isinstance(channel, web.Response):
            return channel
        data, files = request[PARAMS], request[FILES]
        reference = data.get("message_reference")
        if reference is not None:  # snowflakes may be sent as numbers; Discord answers with strings
            reference = {k: str(v) if k.endswith("_id") and v is not None else v for k, v in reference.items()}
        if reference is not None and reference.get("message_id") not in self.messages:
            return discord_error(400, 50035, "Invalid Form Body: unknown message_reference")
        return json_response(self.store.create(channel, data, files, flags=data.get("flags", 0), reference=reference))

    async def _list_messages(self, request: web.Request) -> web.Response:
        """Channel history (ephemeral messages are not in it): newest first, or the `limit` oldest
        after `after`, as Discord answers."""
        channel = self._channel_or_error(request)
        if isinstance(channel, web.Response):
            return channel
        after, before = (int(request.query.get(key) or 0) for key in ("after", "before"))
        limit = min(int(request.query.get("limit") or 50), 100)
        found = sorted(
            (m for m in self.messages.values() if m["channel_id"] == channel.id and not m["flags"] & dp.MESSAGE_FLAG_EPHEMERAL),
            key=lambda m: int(m["id"]),
        )
        found = [m for m in found if int(m["id"]) > after and (not before or int(m["id"]) < before)]
        found = found[:limit] if after else found[-limit:]
        return json_response(found[::-1])

    def _message_or_error(self, request: web.Request) -> dict[str, Any] | web.Response:
        message = self.messages.get(request.match_info["message_id"])
        if message is None or message["channel_id"] != request.match_info["channel_id"]:
            return discord_error(404, 10008, "Unknown Message")
        return message

    async def _get_message(self, request: web.Request) -> web.Response:
        message = self._message_or_error(request)
        return message if isinstance(message, web.Response) else json_response(message)

    async def _edit_message(self, request: web.Request) -> web.Response:
        message = self._message_or_error(request)
        if isinstance(message, web.Response):
            return message
        if message["author"]["id"] != self.bot_user.id:
            return discord_error(403, 50005, "Cannot edit a message authored by another user")
        return json_response(self.store.edit(message, request[PARAMS] or {}, request[FILES]))

    async def _delete_message(self, request: web.Request) -> web.Response:
        message = self._message_or_error(request)
        if isinstance(message, web.Response):
            return message
        del self.messages[message["id"]]
        return web.Response(status=204)

    async def _typing(self, request: web.Request) -> web.Response:
        channel = self._channel_or_error(request)
        return channel if isinstance(channel, web.Response) else web.Response(status=204)

    async def _get_user(self, request: web.Request) -> web.Response:
        user = next((u for u in self.guild.members if u.id == request.match_info["user_id"]), None)
        return json_response(user.payload()) if user is not None else discord_error(404, 10013, "Unknown User")

    async def _create_dm(self, request: web.Request) -> web.Response:
        recipient = next((u for u in self.guild.members if u.id == str(request[PARAMS]["recipient_id"])), None)
        if recipient is None:
            return discord_error(400, 50007, "Cannot send messages to this user")
        return json_response(self.dm_channel(recipient).payload())

    async def _cdn_file(self, request: web.Request) -> web.Response:
        stored = self.store.cdn_file(request.path)
        if stored is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=stored[0], content_type=stored[1])

    async def _unknown_route(self, request: web.Request) -> web.Response:
        return discord_error(404, 0, f"404: Not Found (the fake does not implement {request.method} {request.path})")

    def _metadata(self, interaction: FakeInteraction) -> dict[str, Any]:
        return dp.interaction_metadata(interaction_id=interaction.id, kind=interaction.kind, user=interaction.user)
