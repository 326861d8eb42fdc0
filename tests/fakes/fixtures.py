"""Pytest fixtures and runners that connect the real discord.py / python-telegram-bot to the fakes.

Import the fixtures into a test module (``from fakes.fixtures import fake_discord, ...``) or list the
module in the root conftest's ``pytest_plugins``. Every fixture starts its fake on 127.0.0.1 and
stops it (and whatever client a runner started) at the end of the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import discord
import discord.gateway
import discord.http
import pytest
import yarl
from telegram.ext import Application, ApplicationBuilder

from .discord_server import FakeDiscord
from .telegram_server import FakeTelegram

__all__ = [
    "fake_discord",
    "fake_telegram",
    "point_discord_py_at",
    "running_discord_client",
    "running_telegram_app",
    "telegram_app_builder",
]


def point_discord_py_at(fake: FakeDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    """Send discord.py's REST, webhook and gateway traffic to `fake` for the rest of the test.

    Both seams are class attributes read when a request or connection is made, so they must be set
    before the client starts. A plain Client never calls /gateway/bot, hence DEFAULT_GATEWAY.
    """
    monkeypatch.setattr(discord.http.Route, "BASE", fake.api_base)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url))


@pytest.fixture
async def fake_discord(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    """A started fake Discord with discord.py pointed at it."""
    async with FakeDiscord() as fake:
        point_discord_py_at(fake, monkeypatch)
        yield fake


@asynccontextmanager
async def running_discord_client(
    client: discord.Client, fake: FakeDiscord, *, timeout: float = 10.0
) -> AsyncIterator[discord.Client]:
    """Run `client` against `fake` until the block ends, then close it and await its task.

    Entered once the bot has logged in, run `setup_hook` (command sync) and received READY and
    GUILD_CREATE, i.e. once it can receive interactions. A client crash fails the test at exit.
    """
    task = asyncio.create_task(client.start(fake.token), name="discord-client-under-test")
    try:
        ready = asyncio.create_task(fake.gateway.wait_until_ready(timeout))
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            ready.cancel()
            task.result()
            raise RuntimeError("the Discord client stopped before connecting")
        await ready
        yield client
    finally:
        await client.close()
        await asyncio.wait_for(task, timeout)


@pytest.fixture
async def fake_telegram() -> AsyncIterator[FakeTelegram]:
    """A started fake Telegram Bot API server."""
    async with FakeTelegram() as fake:
        yield fake


def telegram_app_builder(fake: FakeTelegram) -> ApplicationBuilder:
    """An ApplicationBuilder with token and API URLs set for `fake`; add handlers, then `.build()`."""
    return ApplicationBuilder().token(fake.token).base_url(fake.api_base_url).base_file_url(fake.file_base_url)


@asynccontextmanager
async def running_telegram_app(application: Application, *, poll_timeout_s: int = 1) -> AsyncIterator[Application]:
    """Run `application` with polling against the fake until the block ends, then shut it down.

    Same order as `Application.run_polling` (initialize, post_init, polling, start; then updater
    stop, stop, post_stop, shutdown, post_shutdown), without taking over the event loop. A short
    long-poll timeout keeps PTB's last getUpdates on stop from delaying teardown.
    """
    await application.initialize()
    try:
        if application.post_init is not None:
            await application.post_init(application)
        assert application.updater is not None
        await application.updater.start_polling(poll_interval=0.0, timeout=poll_timeout_s)
        await application.start()
        try:
            yield application
        finally:
            await application.updater.stop()
            await application.stop()
            if application.post_stop is not None:
                await application.post_stop(application)
    finally:
        await application.shutdown()
        if application.post_shutdown is not None:
            await application.post_shutdown(application)
