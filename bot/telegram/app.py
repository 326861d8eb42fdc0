"""The Telegram front end: the python-telegram-bot Application, wired to `BotService`, and its runner.

API and file URLs come from `[telegram]` in the config (a local Bot API server lifts the upload limit;
tests point them at a fake). `AIORateLimiter` keeps within Telegram's flood limits and retries a 429
after the `retry_after` it names. Conversation state and `user_data` (only draft ids) persist in a
pickle beside the drafts; `bot_data` is not persisted (it holds the live service).
"""

from __future__ import annotations

import logging
from pathlib import Path

from telegram import BotCommand
from telegram.ext import AIORateLimiter, Application, ApplicationBuilder, PersistenceInput, PicklePersistence

from bot.core.service import BotService
from bot.telegram.commands import command_handlers
from bot.telegram.conversation import album_handler, talk_conversation
from bot.telegram.port import TelegramPort
from bot.telegram.replies import log_error

log = logging.getLogger(__name__)

COMMANDS = {
    "en": [
        ("talk", "Make a video from two photos and a dialogue"),
        ("jobs", "Your videos"),
        ("show", "One video: /show ID"),
        ("cancel", "Stop a video: /cancel [ID]"),
        ("voices", "All voices"),
        ("help", "How it works"),
    ],
    "zh": [
        ("talk", "用两张照片和一段对话制作视频"),
        ("jobs", "我的视频"),
        ("show", "查看视频：/show 编号"),
        ("cancel", "取消视频：/cancel [编号]"),
        ("voices", "全部声音"),
        ("help", "使用说明"),
    ],
}


async def _publish_commands(application: Application) -> None:
    for locale, commands in COMMANDS.items():
        await application.bot.set_my_commands(
            [BotCommand(name, description) for name, description in commands],
            language_code=None if locale == "en" else locale,
        )


def build_application(service: BotService, token: str, *, state_path: Path | None = None) -> Application:
    """The Application with every handler; `state_path` defaults to beside the drafts."""
    settings = service.settings.telegram
    state_path = state_path or service.drafts.root / "telegram-conversations.pickle"
    state_path.parent.mkdir(parents=True, exist_ok=True)
    persistence = PicklePersistence(
        filepath=state_path,
        store_data=PersistenceInput(bot_data=False, chat_data=False, user_data=True, callback_data=False),
        update_interval=1,  # a crash loses at most a second of conversation state (drafts are on disk at once)
    )
    application = (
        ApplicationBuilder()
        .token(token)
        .base_url(settings.api_base_url)
        .base_file_url(settings.file_base_url)
        .rate_limiter(AIORateLimiter(max_retries=3))
        .persistence(persistence)
        .post_init(_publish_commands)
        .build()
    )
    application.bot_data["service"] = service
    application.add_handler(album_handler(), group=-1)
    application.add_handler(talk_conversation())
    for handler in command_handlers():
        application.add_handler(handler)
    application.add_error_handler(log_error)
    return application


class TelegramFrontEnd:
    """Runs the Application with long polling inside an existing event loop (`duet bots`)."""

    def __init__(self, service: BotService, token: str, *, state_path: Path | None = None) -> None:
        self.application = build_application(service, token, state_path=state_path)
        self.port = TelegramPort(self.application.bot, service.settings.telegram)

    async def start(self) -> None:
        application = self.application
        await application.initialize()
        if application.post_init is not None:
            await application.post_init(application)
        assert application.updater is not None
        await application.updater.start_polling(allowed_updates=["message", "callback_query"])
        await application.start()
        log.info("telegram front end started", extra={"action": "start", "platform": "telegram"})

    async def stop(self) -> None:
        application = self.application
        if application.updater is not None and application.updater.running:
            await application.updater.stop()
        if application.running:
            await application.stop()
        await application.shutdown()
