"""`duet bots`: the chat front ends whose tokens are set, their delivery watchers, and the web server.

`run_bots(settings, secrets)` runs until SIGINT/SIGTERM (or `stop` is set) and returns the exit code.
A front end is anything with a `port` (bot.delivery.PlatformPort), `start()` and `stop()`: Telegram's is
bot/telegram/app.py::TelegramFrontEnd, Discord's is bot/discord/app.py::DiscordFrontEnd (imported only
when DISCORD_TOKEN is set, so a Telegram-only host never loads discord.py).

Logging is set up here and nowhere else. Telegram puts the token in every request URL, and httpx logs
URLs at INFO: httpx/httpcore are kept at WARNING, and a filter on every root handler replaces each
secret's text — in messages, arguments, extra fields and formatted tracebacks — with `[REDACTED]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterable
from typing import Protocol

from aiohttp import web

from bot.core.drafts import DraftStore
from bot.core.service import BotService
from bot.delivery import DeliveryMetrics, DeliveryWatcher, PlatformPort
from bot.http import LinkSigner, build_http_app
from storage import admin
from storage.cli import Services, open_services
from storage.settings import Secrets, Settings

log = logging.getLogger(__name__)

NO_TOKEN_MESSAGE = (
    "No chat platform to run: set TELEGRAM_TOKEN and/or DISCORD_TOKEN in the environment "
    "(never in bot_config.toml or on the command line). Optional: DUET_LINK_SECRET for download links."
)
REDACTED = "[REDACTED]"
QUIET_LOGGERS = ("httpx", "httpcore")
HOUSEKEEPING_INTERVAL_S = 3600.0
SHUTDOWN_GRACE_S = 30.0


class FrontEnd(Protocol):
    port: PlatformPort

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class RedactingFilter(logging.Filter):
    """Replaces secrets in a record before any handler formats it (returns True: nothing is dropped)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def redact(self, value: str) -> str:
        for secret in self.secrets:
            value = value.replace(secret, REDACTED)
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(secret in message for secret in self.secrets):
            record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        for name, value in list(vars(record).items()):
            if isinstance(value, str) and name not in ("msg", "exc_text"):
                setattr(record, name, self.redact(value))
        return True


def install_log_redaction(secrets: Iterable[str]) -> RedactingFilter:
    """Quiet the URL-logging HTTP clients and redact `secrets` on every root handler."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    redacting = RedactingFilter(secrets)
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
    for handler in root.handlers:
        handler.addFilter(redacting)
    return redacting


def _front_ends(service: BotService, secrets: Secrets) -> list[FrontEnd]:
    front_ends: list[FrontEnd] = []
    if secrets.telegram_token is not None:
        from bot.telegram.app import TelegramFrontEnd

        front_ends.append(TelegramFrontEnd(service, secrets.telegram_token.get_secret_value()))
    if secrets.discord_token is not None:
        from bot.discord.app import DiscordFrontEnd  # type: ignore[import-not-found]

        front_ends.append(DiscordFrontEnd(service, secrets.discord_token.get_secret_value()))
    return front_ends


async def _housekeeping(drafts: DraftStore, services: Services) -> None:
    """Hourly: drop stale drafts and apply the media retention rules (idempotent, safe beside an engine
    or an operator doing the same)."""
    while True:
        try:
            await drafts.prune()
            removed = await admin.enforce_retention(services.queue, services.media)
            log.info("housekeeping done: %s", removed, extra={"action": "housekeeping"})
        except Exception:
            log.exception("housekeeping failed", extra={"action": "housekeeping"})
        await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)


async def run_bots(settings: Settings, secrets: Secrets, *, stop: asyncio.Event | None = None) -> int:
    if secrets.telegram_token is None and secrets.discord_token is None:
        print(NO_TOKEN_MESSAGE, file=sys.stderr)
        return 2
    install_log_redaction(
        s.get_secret_value() for s in (secrets.telegram_token, secrets.discord_token, secrets.link_secret) if s
    )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)

    services = await open_services(settings)
    drafts = DraftStore.beside_media(settings.storage.media_dir)
    service = BotService(settings, services.queue, services.media, drafts)
    metrics = DeliveryMetrics()
    signer = None
    if secrets.link_secret is not None:
        secret = secrets.link_secret.get_secret_value().encode()
        signer = LinkSigner(secret, settings.http.public_base_url, settings.http.link_ttl_s)
    else:
        log.warning("DUET_LINK_SECRET is not set: videos too large for a chat cannot be sent as links")
    runner = web.AppRunner(build_http_app(services.queue, services.media, metrics, signer))
    front_ends: list[FrontEnd] = []
    watchers: list[DeliveryWatcher] = []
    tasks: list[asyncio.Task] = []
    housekeeper: asyncio.Task | None = None
    try:
        await runner.setup()
        await web.TCPSite(runner, settings.http.host, settings.http.port).start()
        for front_end in _front_ends(service, secrets):
            await front_end.start()
            front_ends.append(front_end)
            watcher = DeliveryWatcher(service, front_end.port, link_signer=signer, metrics=metrics)
            watchers.append(watcher)
            tasks.append(asyncio.create_task(watcher.run(), name=f"delivery-{front_end.port.platform}"))
        housekeeper = asyncio.create_task(_housekeeping(drafts, services), name="housekeeping")
        log.info("duet bots running", extra={"action": "start", "platforms": [f.port.platform for f in front_ends]})
        await stop.wait()
    finally:
        if housekeeper is not None:
            housekeeper.cancel()
        for watcher in watchers:
            watcher.stop()  # finishes the post in progress, so it is recorded as delivered
        if tasks:
            _, unfinished = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_S)
            for task in unfinished:
                task.cancel()
        for front_end in reversed(front_ends):
            with contextlib.suppress(Exception):
                await front_end.stop()
        await runner.cleanup()
        await services.queue.db.dispose()
    return 0
