"""The websocket half of the fake Discord: HELLO, heartbeats, IDENTIFY → READY + GUILD_CREATE,
RESUME with replay of missed dispatches, and op 7 RECONNECT on request.

Frames go out as plain JSON text: discord.py asks for zlib/zstd transport compression in the
URL but reads uncompressed text frames too, so the fake needs no compressor.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

OP_DISPATCH, OP_HEARTBEAT, OP_IDENTIFY, OP_RESUME, OP_RECONNECT, OP_INVALID_SESSION, OP_HELLO, OP_HEARTBEAT_ACK = (
    0, 1, 2, 6, 7, 9, 10, 11,
)  # fmt: skip
CLOSE_AUTHENTICATION_FAILED = 4004


@dataclass
class GatewaySession:
    """One IDENTIFY'd session; dispatches are kept so a RESUME can replay what it missed."""

    session_id: str
    sequence: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


class FakeGateway:
    """Serves one bot connection at a time; `opening_events` builds READY's followers per session.

    `opening_events(session_id)` returns the (event, data) pairs sent right after IDENTIFY:
    READY first, then one GUILD_CREATE per guild.
    """

    def __init__(self, *, token: str, opening_events: Callable[[str], list[tuple[str, dict[str, Any]]]]) -> None:
        self._token = token
        self._opening_events = opening_events
        self.identifies: list[dict[str, Any]] = []
        self.resumes: list[dict[str, Any]] = []
        self._session: GatewaySession | None = None
        self._socket: web.WebSocketResponse | None = None
        self._ready = asyncio.Event()

    async def wait_until_ready(self, timeout: float = 10.0) -> None:
        """Until the bot has identified (or resumed) and received its opening events."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a DISPATCH; kept for replay if the bot is between connections."""
        session = self._session
        if session is None:
            raise RuntimeError("no gateway session: has the bot connected?")
        session.sequence += 1
        frame = {"op": OP_DISPATCH, "t": event, "s": session.sequence, "d": data}
        session.history.append(frame)
        if self._socket is not None and not self._socket.closed:
            await self._socket.send_str(json.dumps(frame))

    async def request_reconnect(self) -> None:
        """Op 7: the bot must reconnect and RESUME its session."""
        self._ready.clear()
        if self._socket is not None:
            await self._socket.send_str(json.dumps({"op": OP_RECONNECT, "d": None}))

    async def close(self) -> None:
        if self._socket is not None:
            await self._socket.close()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self._socket = socket
        await socket.send_str(json.dumps({"op": OP_HELLO, "d": {"heartbeat_interval": 41250}}))
        async for message in socket:
            if message.type != WSMsgType.TEXT:
                break
            frame = json.loads(message.data)
            if frame["op"] == OP_HEARTBEAT:
                await socket.send_str(json.dumps({"op": OP_HEARTBEAT_ACK}))
            elif frame["op"] == OP_IDENTIFY:
                await self._identify(socket, frame["d"])
            elif frame["op"] == OP_RESUME:
                await self._resume(socket, frame["d"])
        if self._socket is socket:
            self._socket = None
            self._ready.clear()
        return socket

    async def _identify(self, socket: web.WebSocketResponse, identify: dict[str, Any]) -> None:
        if identify.get("token") != self._token:
            await socket.close(code=CLOSE_AUTHENTICATION_FAILED, message=b"Authentication failed.")
            return
        self.identifies.append(identify)
        self._session = GatewaySession(session_id=secrets.token_hex(8))
        for event, data in self._opening_events(self._session.session_id):
            await self.dispatch(event, data)
        self._ready.set()

    async def _resume(self, socket: web.WebSocketResponse, resume: dict[str, Any]) -> None:
        self.resumes.append(resume)
        session = self._session
        if session is None or resume.get("session_id") != session.session_id or resume.get("token") != self._token:
            await socket.send_str(json.dumps({"op": OP_INVALID_SESSION, "d": False}))
            return
        for frame in session.history:
            if frame["s"] > (resume.get("seq") or 0):
                await socket.send_str(json.dumps(frame))
        await self.dispatch("RESUMED", {})
        self._ready.set()
