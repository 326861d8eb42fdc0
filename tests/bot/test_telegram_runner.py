"""`duet bots` end to end with Telegram: the runner starts the front end and its watcher, and no log line
anywhere — library debug output, httpx, tracebacks — ever contains the bot token."""

from __future__ import annotations

import asyncio
import logging

from chat_helpers import FakeEngine, TelegramChat, make_mp4, open_service, queue_sample_job
from click.testing import CliRunner
from fakes.fixtures import fake_telegram  # noqa: F401
from fakes.telegram_server import FakeTelegram
from pydantic import SecretStr

from bot.app import run_bots
from bot.cli import main
from storage.contract import Requester
from storage.settings import HttpSettings, Secrets, Settings, StorageSettings, TelegramSettings


def settings_for(fake: FakeTelegram, tmp_path) -> Settings:
    return Settings(
        storage=StorageSettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'duet.db'}", media_dir=tmp_path / "media"),
        telegram=TelegramSettings(api_base_url=fake.api_base_url, file_base_url=fake.file_base_url),
        http=HttpSettings(port=0),
    )


async def finished_job(fake: FakeTelegram, settings: Settings, tmp_path) -> str:
    """A job of this chat that an engine finished while the bot was not running."""
    service = await open_service(tmp_path, settings, db_url=settings.storage.database_url)
    user_id = str(fake.user.id)
    job_id = await queue_sample_job(service, Requester(platform="telegram", user_id=user_id, chat_id=user_id))
    engine = FakeEngine(service)
    job, token = await engine.claim()
    await engine.complete(job, token, make_mp4(0.5))
    await service.queue.db.dispose()
    return job_id


async def test_duet_bots_serves_telegram_delivers_and_never_logs_the_token(
    fake_telegram: FakeTelegram, tmp_path, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = settings_for(fake_telegram, tmp_path)
    await finished_job(fake_telegram, settings, tmp_path)
    token = fake_telegram.token
    secrets = Secrets(telegram_token=SecretStr(token), link_secret=SecretStr("link-secret-value"))
    stop = asyncio.Event()
    runner = asyncio.create_task(run_bots(settings, secrets, stop=stop))
    chat = TelegramChat(fake_telegram)
    try:
        await fake_telegram.wait_for_call("deleteWebhook", timeout=15)  # polling has started
        fake_telegram.send_command("start")
        await chat.bot_says("/talk")
        await fake_telegram.wait_for_call("sendVideo", timeout=15)
        # What a careless library or a traceback would write: the filter must catch both.
        logging.getLogger("httpx").warning("HTTP Request: POST %s/bot%s/getMe", fake_telegram.base_url, token)
        try:
            raise RuntimeError(f"request to /bot{token}/sendVideo failed")
        except RuntimeError:
            logging.getLogger("telegram.ext").exception("update failed with %s", token)
    finally:
        stop.set()
        assert await asyncio.wait_for(runner, 20) == 0

    records = caplog.records
    assert any("telegram.ext" in r.name for r in records), "library debug output was captured"
    assert any("[REDACTED]" in r.getMessage() for r in records)
    for record in records:
        assert token not in record.getMessage()
        assert token not in (record.exc_text or "")
        assert "link-secret-value" not in record.getMessage()
    assert token not in caplog.text
    assert logging.getLogger("httpx").getEffectiveLevel() >= logging.WARNING


def test_duet_bots_without_a_token_says_what_to_set_and_fails(monkeypatch) -> None:
    monkeypatch.delenv("TELEGRAM_TOKEN", raising=False)
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    monkeypatch.setenv("DUET_CONFIG", "")
    result = CliRunner().invoke(main, ["bots"])
    assert result.exit_code == 2
    assert "TELEGRAM_TOKEN" in result.output and "DISCORD_TOKEN" in result.output
