"""Who may run the admin commands (the config's allow-list, never Discord permissions), and `duet bots`
with Discord: the runner starts the front end and its watcher, and no log line ever holds the token."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

from chat_helpers import FakeEngine, make_mp4, open_service
from discord_helpers import DiscordUser, custom_ids, discord_settings, queue_job, running_bot
from fakes.discord_server import ROUTE_GLOBAL_COMMANDS, ROUTE_GUILD_COMMANDS, FakeDiscord
from fakes.fixtures import fake_discord  # noqa: F401
from pydantic import SecretStr

from bot.app import run_bots
from storage.contract import JobState
from storage.settings import DiscordSettings, HttpSettings, Secrets, Settings, StorageSettings

ADMINISTRATOR = 1 << 3


async def test_admin_commands_follow_the_allow_list_not_discord_permissions(tmp_path, fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    bob = fake.add_user("bob")
    service = await open_service(tmp_path, discord_settings(fake, admin_ids=(bob.id,)))
    alice, admin = DiscordUser(fake), DiscordUser(fake, bob)
    job_id = await queue_job(service, fake)
    try:
        async with running_bot(fake, service):
            commands = {c["name"]: c for c in fake.calls(ROUTE_GUILD_COMMANDS)[0].params}
            assert not fake.calls(ROUTE_GLOBAL_COMMANDS), "with a dev guild, global commands are left alone"
            admin_only = {int(commands[name]["default_member_permissions"]) for name in ("queue", "pause", "resume")}
            assert admin_only == {ADMINISTRATOR}, "hidden from non-administrators in the client (UI only)"
            assert commands["talk"].get("default_member_permissions") is None
            assert commands["talk"]["description_localizations"]["zh-CN"] == "用两张照片和一段对话制作两个人对话的视频"
            voice_a = next(o for o in commands["talk"]["options"] if o["name"] == "voice_a")
            assert voice_a["description_localizations"]["zh-TW"] == "人物 A 的声音"
            for name in ("pause", "queue", "resume"):  # alice has every Discord permission in the fake guild
                asked = await alice.command(name)
                await alice.answer(asked, "Only Duet admins")
            assert await service.queue.paused() == {"intake": False, "claims": False}

            stats = await admin.answer(await admin.command("queue"), "Queue: 1 waiting")
            assert "Intake open" in stats["content"]
            await admin.answer(await admin.command("pause"), "Paused")
            assert await service.queue.paused() == {"intake": True, "claims": True}
            preview = await alice.make_preview()
            pressed = await alice.press(preview, "duet:draft:render:")
            await alice.answer(pressed, "not taking new videos")
            await admin.answer(await admin.command("resume"), "Resumed")
            second, status = await alice.render(preview, service)  # the refused card kept its buttons
            pressed = await admin.press(status, "duet:job:cancel:")  # an admin may press anyone's Cancel
            await admin.answer(pressed, f"Job {second} is cancelled")

            await admin.answer(await admin.command("cancel", job=job_id), f"Job {job_id} is cancelled")
    finally:
        await service.queue.db.dispose()
    assert await service.queue.paused() == {"intake": False, "claims": False}
    assert [(await service.queue.get(j)).state for j in (job_id, second)] == [JobState.CANCELLED] * 2


def settings_for(fake: FakeDiscord, tmp_path) -> Settings:
    return Settings(
        storage=StorageSettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'duet.db'}", media_dir=tmp_path / "media"),
        discord=DiscordSettings(api_base_url=fake.api_base, dev_guild_id=fake.guild.id),
        http=HttpSettings(port=0),
    )


async def test_duet_bots_serves_discord_delivers_and_never_logs_the_token(
    fake_discord: FakeDiscord, tmp_path, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    fake = fake_discord
    settings = settings_for(fake, tmp_path)
    service = await open_service(tmp_path, settings, db_url=settings.storage.database_url)
    job_id = await queue_job(service, fake)  # finished while the bot was not running
    engine = FakeEngine(service)
    job, token = await engine.claim()
    await engine.complete(job, token, make_mp4(0.5))
    await service.queue.db.dispose()

    stop = asyncio.Event()
    runner = asyncio.create_task(run_bots(settings, Secrets(discord_token=SecretStr(fake.token)), stop=stop))
    alice = DiscordUser(fake)
    try:
        await fake.gateway.wait_until_ready(15)
        answer = await alice.answer(await alice.command("voices"), "af_heart", timeout=15)
        video = await alice.channel_message(lambda m: any(a["filename"] == "duet.mp4" for a in m["attachments"]), timeout=15)
        assert custom_ids(video) == [f"duet:job:reroll:{job_id}"]
        try:
            raise RuntimeError(f"PATCH with Authorization: Bot {fake.token} failed")
        except RuntimeError:
            logging.getLogger("discord.http").exception("request failed for %s", fake.token)
    finally:
        stop.set()
        assert await asyncio.wait_for(runner, 20) == 0

    assert answer["flags"] & 64
    assert fake.gateway.identifies[0]["token"] == fake.token, "the token did reach Discord"
    assert any(r.name.startswith("discord.") and r.levelno == logging.DEBUG for r in caplog.records), "library debug output was captured"
    assert any("[REDACTED]" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        assert fake.token not in record.getMessage()
        assert fake.token not in (record.exc_text or "")
    assert fake.token not in caplog.text


def test_a_telegram_only_host_never_imports_discord() -> None:
    probe = "import sys, bot.app, bot.delivery, bot.core.service; sys.exit('discord' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], timeout=120).returncode == 0
