"""The script modal: a slash option cannot hold line breaks, so a dialogue typed in Discord comes here.

Shown by `/talk` without `script`/`script_file` (the photos download while the person types) and by the
preview's Edit button (filled with the current script and scene). A modal must be the interaction's first answer,
so whoever shows it does nothing slow before. The typed script is kept in the draft even when it is
refused, and the refusal carries an Edit button that reopens the modal with it: nothing typed is lost.
"""

from __future__ import annotations

import asyncio

import discord

from bot.core.actions import Action, Verb
from bot.core.drafts import DraftState
from bot.core.errors import InputError
from bot.core.texts import text
from bot.discord.replies import answer_error, answer_errors, locale_of, present_draft, say, service_of
from storage.settings import Settings

DISCORD_TEXT_INPUT_CHARS = 4000
MAX_SCENE_CHARS = 500
MODAL_TIMEOUT_S = 900.0  # the interaction token dies after 15 minutes anyway


class ScriptModal(discord.ui.Modal):
    """The dialogue (a paragraph) and the scene (a line), filled with what the draft has."""

    def __init__(
        self, draft: DraftState, locale: str | None, settings: Settings, *, photos: asyncio.Task | None = None
    ) -> None:
        super().__init__(title=text("modal.title", locale), timeout=MODAL_TIMEOUT_S, custom_id=f"duet:modal:{draft.id}")
        self.draft_id = draft.id
        self.photos = photos  # the photos' download and checks, started when /talk showed this modal
        self.script: discord.ui.TextInput = discord.ui.TextInput(
            label=text("modal.script_label", locale),
            style=discord.TextStyle.long,
            custom_id="duet:script",
            placeholder=text("modal.script_placeholder", locale),
            default=(draft.script or "")[:DISCORD_TEXT_INPUT_CHARS] or None,
            max_length=min(DISCORD_TEXT_INPUT_CHARS, settings.limits.max_script_chars),
        )
        self.scene: discord.ui.TextInput = discord.ui.TextInput(
            label=text("modal.scene_label", locale),
            style=discord.TextStyle.short,
            custom_id="duet:scene",
            placeholder=text("modal.scene_placeholder", locale),
            default=draft.scene or None,
            required=False,
            max_length=MAX_SCENE_CHARS,
        )
        self.add_item(self.script)
        self.add_item(self.scene)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await submit_script(interaction, self.draft_id, self.script.value, self.scene.value.strip(), self.photos)

    async def on_timeout(self) -> None:
        if self.photos is not None:
            self.photos.cancel()

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        await answer_error(interaction, error, where="script_modal")


async def check_script_into_draft(interaction: discord.Interaction, draft_id: str, raw: str | bytes) -> bool:
    """Keep the script in the draft, then check it; a refusal is answered with an Edit button."""
    service = service_of(interaction)
    try:
        script = service.read_script(raw)
        await service.update_draft(draft_id, script=script)
        service.check_script(script)
    except InputError as error:
        await say(interaction, error.message(locale_of(interaction)), (Action(Verb.EDIT, draft_id),))
        return False
    return True


@answer_errors
async def submit_script(
    interaction: discord.Interaction, draft_id: str, script: str, scene: str, photos: asyncio.Task | None
) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    source = interaction.message  # what Edit was pressed on: a preview card, or an ephemeral refusal
    if source is not None and not source.flags.ephemeral:  # a superseded card loses its buttons
        await source.edit(view=None)
    await service_of(interaction).update_draft(draft_id, script=script, scene=scene)  # kept whatever is refused
    if photos is not None:
        await photos  # a refused photo is answered by answer_errors
    if await check_script_into_draft(interaction, draft_id, script):
        await present_draft(interaction, draft_id)
