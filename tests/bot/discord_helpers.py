"""Scaffolding for the Discord front-end tests: the bot as `duet bots` runs it against the fake Discord,
and a person in the guild channel who runs commands, reads the bot's answers and presses buttons."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any

from chat_helpers import PHOTO_A, PHOTO_B, queue_sample_job
from fakes.discord_server import FakeDiscord, FakeInteraction
from fakes.recording import wait_until

from bot.core.drafts import DraftStore
from bot.core.service import Actor, BotService
from bot.delivery import DeliveryWatcher
from bot.discord.client import DuetDiscordClient
from storage.contract import Requester
from storage.settings import DiscordSettings, Settings

ONE_LINE_SCRIPT = "A: Hi, I am Grace. B: Hello Grace, nice to meet you!"


def discord_settings(fake: FakeDiscord, **discord: Any) -> Settings:
    """Default settings with the commands synced to the fake's guild (plus any `[discord]` overrides)."""
    section = DiscordSettings(**({"api_base_url": fake.api_base, "dev_guild_id": fake.guild.id, "edit_interval_s": 1.0} | discord))
    return Settings(discord=section)


@asynccontextmanager
async def running_bot(fake: FakeDiscord, service: BotService, **watcher_options: Any):
    """The client (commands, buttons, port) plus its delivery watcher, whose ticks the test calls so
    that every edit and delivery happens at a known point."""
    from fakes.fixtures import running_discord_client

    client = DuetDiscordClient(service)
    async with running_discord_client(client, fake):
        yield DeliveryWatcher(service, client.port, poll_interval_s=0.05, **watcher_options)


def restart(service: BotService) -> BotService:
    """A new bot process: fresh service objects over the same database, media and drafts."""
    return BotService(service.settings, service.queue, service.media, DraftStore(service.drafts.root))


async def queue_job(service: BotService, fake: FakeDiscord, user=None) -> str:
    """A queued job of `user` (consent given) in the guild channel, from the sample composed once per
    session: for tests about what happens to jobs, not about how a request becomes one."""
    user = user or fake.user
    await service.record_consent(Actor("discord", user.id))
    requester = Requester(platform="discord", user_id=user.id, chat_id=fake.channel.id, guild_id=fake.guild.id)
    return await queue_sample_job(service, requester)


def components_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [child for row in message.get("components", []) for child in row.get("components", [])]


def custom_ids(message: dict[str, Any]) -> list[str]:
    return [c["custom_id"] for c in components_of(message) if "custom_id" in c]


def modal_inputs(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The text inputs of a modal answer (type 9) by custom id, in rows or labels."""
    found = [row.get("component") or row["components"][0] for row in answer["data"]["components"]]
    return {component["custom_id"]: component for component in found}


def job_id_in(content: str) -> str:
    return content.rsplit("Job ", 1)[1].split()[0].rstrip(".")


class DiscordUser:
    """Plays one person in the fake guild's channel."""

    def __init__(self, fake: FakeDiscord, user=None) -> None:
        self.fake = fake
        self.user = user or fake.user

    def photos(self) -> tuple[dict, dict]:
        a = self.fake.upload_attachment("grace_hopper.jpg", PHOTO_A, content_type="image/jpeg", width=512, height=600)
        b = self.fake.upload_attachment("astronaut.png", PHOTO_B, content_type="image/png", width=512, height=512)
        return a, b

    async def command(self, name: str, **options: Any) -> FakeInteraction:
        return await self.fake.run_slash_command(name, options, user=self.user)

    async def talk(self, **options: Any) -> FakeInteraction:
        """/talk with the two sample photos unless other photos are given."""
        a, b = self.photos()
        return await self.command("talk", **({"photo_a": a, "photo_b": b} | options))

    def answers(self, interaction: FakeInteraction) -> list[dict[str, Any]]:
        """The bot's messages answering `interaction` (its response and follow-ups), as they stand now."""
        return [m for m in self.fake.messages.values() if m.get("interaction_metadata", {}).get("id") == interaction.id]

    async def answer(self, interaction: FakeInteraction, needle: str, timeout: float = 10.0) -> dict[str, Any]:
        """The first answer to `interaction` whose text contains `needle` (waits for it)."""

        def found() -> dict[str, Any] | None:
            return next((m for m in self.answers(interaction) if needle in m["content"]), None)

        await wait_until(lambda: found() is not None, timeout=timeout)
        return found()  # type: ignore[return-value]

    async def channel_message(self, condition, timeout: float = 10.0) -> dict[str, Any]:
        """The newest regular channel message (not an interaction answer) that satisfies `condition`."""

        def found() -> dict[str, Any] | None:
            plain = [m for m in self.fake.messages.values() if "interaction_metadata" not in m and condition(m)]
            return plain[-1] if plain else None

        await wait_until(lambda: found() is not None, timeout=timeout)
        return found()  # type: ignore[return-value]

    async def preview(self, *, after: str | None = None) -> dict[str, Any]:
        """The newest preview card (posted after message `after`, when given)."""
        return await self.channel_message(
            lambda m: any(a["filename"] == "preview.jpg" for a in m["attachments"])
            and (after is None or int(m["id"]) > int(after))
        )

    async def press(self, message: dict[str, Any], prefix: str) -> FakeInteraction:
        custom_id = next(c for c in custom_ids(self.fake.messages[message["id"]]) if c.startswith(prefix))
        return await self.fake.click_button(message["id"], custom_id, user=self.user)

    async def render(self, preview: dict[str, Any], service: BotService) -> tuple[str, dict[str, Any]]:
        """Press Render; returns the job id and its status message once the job row knows it."""
        await self.press(preview, "duet:draft:render:")
        status = await self.channel_message(
            lambda m: m["content"].startswith("Queued") and m.get("message_reference", {}).get("message_id") == preview["id"]
        )
        job_id = job_id_in(status["content"])
        for _ in range(500):
            if (await service.queue.get(job_id)).status_message_id == status["id"]:
                break
            await asyncio.sleep(0.01)
        return job_id, status

    async def make_preview(self, **options: Any) -> dict[str, Any]:
        """/talk with a one-line script (consent already given) → the preview card."""
        newest = max((int(i) for i in self.fake.messages), default=0)
        asked = await self.talk(**({"script": ONE_LINE_SCRIPT} | options))
        await self.answer(asked, "preview is below")
        return await self.preview(after=str(newest))
