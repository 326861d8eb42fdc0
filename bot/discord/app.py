"""The Discord front end as `duet bots` runs it: the client started inside the running event loop.

`bot/app.py` imports this module only when DISCORD_TOKEN is set. The REST base URL comes from
`[discord] api_base_url` (tests point it at a fake); the token is handed to discord.py and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import discord.http

from bot.core.service import BotService
from bot.discord.client import DuetDiscordClient

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0


class DiscordFrontEnd:
    def __init__(self, service: BotService, token: str) -> None:
        self.client = DuetDiscordClient(service)
        self.port = self.client.port
        self._token = token
        self._api_base_url = service.settings.discord.api_base_url
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Log in, sync commands, connect; returns once the gateway is ready (or raises if it fails)."""
        discord.http.Route.BASE = self._api_base_url
        self._task = asyncio.create_task(self.client.start(self._token), name="discord-client")
        ready = asyncio.create_task(self.client.wait_until_ready(), name="discord-ready")
        done, _ = await asyncio.wait({self._task, ready}, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            ready.cancel()
            self._task.result()  # the login or connection error
            raise RuntimeError("the Discord client stopped before it was ready")
        if ready not in done:
            ready.cancel()
            raise TimeoutError(f"Discord was not ready after {READY_TIMEOUT_S:.0f} s")
        log.info("discord front end started", extra={"action": "start", "platform": "discord"})

    async def stop(self) -> None:
        await self.client.close()
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._task
