"""`DuetDiscordClient`: the discord.py client that owns the command tree, the restart-proof buttons and
the delivery port, all wired to one `BotService`.

Commands sync in `setup_hook`, as `bot_config.toml` describes: to `[discord] dev_guild_id` when one is
set (instant, for development), globally when it is not (Discord shows global changes within about an
hour), or both with `sync_globally`. A sync is one bulk overwrite, so restarting with unchanged commands
creates none. Nothing pings by default (`AllowedMentions.none()`); the delivery names its one user.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands

from bot.core.service import BotService
from bot.discord.commands import COMMANDS
from bot.discord.locales import DuetTranslator
from bot.discord.port import DiscordPort
from bot.discord.replies import answer_error
from bot.discord.views import ActionButton

log = logging.getLogger(__name__)


class DuetDiscordClient(discord.Client):
    def __init__(self, service: BotService, **options) -> None:
        intents = discord.Intents.none()
        intents.guilds = True  # guild cache: channels, and each guild's upload limit
        super().__init__(intents=intents, allowed_mentions=discord.AllowedMentions.none(), **options)
        self.service = service
        self.port = DiscordPort(self, service.settings.discord)
        self.tree = app_commands.CommandTree(self)
        self.tree.on_error = self._on_command_error  # type: ignore[method-assign]
        for command in COMMANDS:
            self.tree.add_command(command)

    async def setup_hook(self) -> None:
        self.add_dynamic_items(ActionButton)
        await self.tree.set_translator(DuetTranslator())
        settings = self.service.settings.discord
        if settings.dev_guild_id:
            guild = discord.Object(int(settings.dev_guild_id))
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("commands synced to the dev guild", extra={"action": "sync", "count": len(synced)})
        if settings.sync_globally or not settings.dev_guild_id:
            synced = await self.tree.sync()
            log.info("commands synced globally", extra={"action": "sync", "count": len(synced)})

    async def _on_command_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        original = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        name = interaction.command.name if interaction.command else "command"
        await answer_error(interaction, original, where=name)
