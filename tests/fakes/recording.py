"""What both fake platform servers share: a loopback aiohttp server, a log of every call it
answered, and scripted faults (rate limits, errors) that a test arms before the bot acts.

Tests assert on the *recorded wire traffic*, not on library internals, so a bot that is
rewritten against another client library still passes the same tests. Nothing here knows
Discord or Telegram; each fake names its routes and decides what a fault looks like.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

CallMatcher = str | Callable[["RecordedCall"], bool]


@dataclass(frozen=True)
class UploadedFile:
    """One file part of a multipart request, as the server received it."""

    field: str
    filename: str
    content_type: str
    data: bytes

    @property
    def size_bytes(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class RecordedCall:
    """One request the fake answered; `route` is the fake's name for it.

    Discord routes read like ``"POST /channels/{channel_id}/messages"``; Telegram routes are the
    Bot API method name (``"sendMessage"``). `params` are the decoded JSON body (Discord) or form
    fields (Telegram); `status` is what the fake answered, so injected faults are visible too.
    """

    route: str
    method: str
    path: str
    query: dict[str, str]
    params: Any
    files: tuple[UploadedFile, ...]
    headers: dict[str, str]
    status: int = 200
    at_s: float = field(default_factory=time.monotonic)

    def file(self, field_name: str | None = None) -> UploadedFile:
        """The uploaded file named `field_name` (or the only one), failing loudly otherwise."""
        matches = [f for f in self.files if field_name is None or f.field == field_name]
        if len(matches) != 1:
            raise LookupError(f"{self.route}: expected one file {field_name!r}, got {[f.field for f in self.files]}")
        return matches[0]


# Where the middleware leaves the parsed body for route handlers.
PARAMS = web.RequestKey("params", Any)
FILES = web.RequestKey("files", tuple)


@dataclass
class Fault:
    """A scripted failure: the next `times` calls matching `route` get this answer instead."""

    route: str
    status: int
    body: Any
    headers: dict[str, str]
    times: int = 1

    def take(self, route: str) -> bool:
        if self.times <= 0 or self.route != route:
            return False
        self.times -= 1
        return True


class CallLog:
    """Every recorded call, in arrival order, with a way to wait for the one a test expects."""

    def __init__(self) -> None:
        self.calls: list[RecordedCall] = []
        self._arrived = asyncio.Event()

    def append(self, call: RecordedCall) -> None:
        self.calls.append(call)
        self._arrived.set()
        self._arrived = asyncio.Event()

    def find(self, match: CallMatcher) -> list[RecordedCall]:
        """All calls matching a route name or a predicate, oldest first."""
        predicate = _as_predicate(match)
        return [call for call in self.calls if predicate(call)]

    async def wait_for(self, match: CallMatcher, *, timeout: float = 5.0, nth: int = 1) -> RecordedCall:
        """The `nth` call matching `match`, waiting up to `timeout` seconds for it to arrive.

        A deadline instead of sleeps: the test continues the moment the bot has acted and fails
        with the calls seen so far when it never does.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(match)
            if len(found) >= nth:
                return found[nth - 1]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                labels = (f"{c.status} {c.route}" for c in self.calls)
                seen = [f"{label} x{len(list(run))}" for label, run in itertools.groupby(labels)]
                raise TimeoutError(f"no call #{nth} matching {match!r} within {timeout}s; seen: {seen}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)


async def wait_until(condition: Callable[[], bool], *, timeout: float = 5.0) -> None:
    """Until `condition()` holds (checked every 10 ms) or fail after `timeout` seconds.

    For state only the bot sees (what a handler stored); wire traffic has `wait_for_call`.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition still false after {timeout}s")
        await asyncio.sleep(0.01)


def _as_predicate(match: CallMatcher) -> Callable[[RecordedCall], bool]:
    if callable(match):
        return match
    return lambda call: call.route == match


class LoopbackServer(abc.ABC):
    """An aiohttp application on 127.0.0.1 at a free port; subclasses add routes in `_routes`.

    A middleware records each call once the handler has answered (so the recorded status is the
    real one) and serves armed faults before the handler runs.
    """

    def __init__(self) -> None:
        self.log = CallLog()
        self.faults: list[Fault] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=512 * 1024 * 1024)
        app.add_routes(self._routes())
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        await self._before_close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> LoopbackServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def wait_for_call(self, match: CallMatcher, *, timeout: float = 5.0, nth: int = 1) -> RecordedCall:
        return await self.log.wait_for(match, timeout=timeout, nth=nth)

    def calls(self, match: CallMatcher | None = None) -> list[RecordedCall]:
        return list(self.log.calls) if match is None else self.log.find(match)

    def fail_next(
        self, route: str, status: int, body: Any, *, headers: dict[str, str] | None = None, times: int = 1
    ) -> None:
        """Answer the next `times` calls of `route` with `status` and JSON `body`."""
        self.faults.append(Fault(route=route, status=status, body=body, headers=headers or {}, times=times))

    # -- hooks for subclasses -------------------------------------------------------------

    @abc.abstractmethod
    def _routes(self) -> list[web.RouteDef]:
        """The platform's routes."""

    @abc.abstractmethod
    def _route_name(self, request: web.Request) -> str | None:
        """The recorded route name, or None for traffic that is not an API call (websocket, files)."""

    @abc.abstractmethod
    async def _parse(self, request: web.Request) -> tuple[Any, tuple[UploadedFile, ...]]:
        """The request's parameters and uploaded files, decoded the way the platform reads them."""

    def _reject(self, request: web.Request, route: str) -> web.Response | None:
        """An error the platform gives before doing anything (bad token, upload too large)."""
        return None

    @abc.abstractmethod
    async def _before_close(self) -> None:
        """Release anything that would keep a handler open (long polls, websockets)."""

    # -- plumbing -------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        route = self._route_name(request)
        if route is None:
            return await handler(request)
        params, files = await self._parse(request)
        request[PARAMS], request[FILES] = params, files
        rejection = self._reject(request, route)
        fault = None if rejection is not None else next((f for f in self.faults if f.take(route)), None)
        if rejection is not None:
            response = rejection
        elif fault is not None:
            response = json_response(fault.body, status=fault.status, headers=fault.headers)
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                response = exc
        self.log.append(
            RecordedCall(
                route=route,
                method=request.method,
                path=request.path,
                query=dict(request.query),
                params=params,
                files=files,
                headers=dict(request.headers),
                status=response.status,
            )
        )
        return response


def json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # Exactly "application/json" without a charset: discord.py only decodes that content type.
    return web.Response(
        body=json.dumps(body).encode(), status=status, headers={**(headers or {}), "Content-Type": "application/json"}
    )


async def read_multipart(request: web.Request) -> tuple[dict[str, str], tuple[UploadedFile, ...]]:
    """Split a multipart body into plain text fields and file parts (those with a filename)."""
    fields: dict[str, str] = {}
    files: list[UploadedFile] = []
    reader = await request.multipart()
    async for part in reader:
        data = await part.read()
        if part.filename is None:
            fields[part.name or ""] = data.decode()
        else:
            content_type = part.headers.get("Content-Type", "application/octet-stream")
            files.append(
                UploadedFile(field=part.name or "", filename=part.filename, content_type=content_type, data=bytes(data))
            )
    return fields, tuple(files)
